//! The data plane under fire: probers start a TCP connection every
//! millisecond to every reserved and undeclared port of a sandbox (and to its declared ports,
//! when they have no mark), from the host namespace without a mark, from another sandbox, from
//! an outside namespace through the public interface (XDP edge guard), and with the gateway's
//! own mark to 443 and a never-declared port, while the gateway is SIGKILLed and restarted,
//! upgraded under `wrk` load (socket handoff), and while the sandbox is re-registered with
//! other ports in a loop. Not one probe may connect. Also: what happens to connections that are
//! open when their port is removed (they keep flowing; new ones are dropped), as documented in
//! README.md ("established TCP ... pass") and docs/SECURITY.md.
//!
//! Short versions run in `cargo xtask test`; `soak_*` (ignored) run longer in `cargo xtask soak`.

use std::{
    fs,
    io::{Read, Write},
    net::SocketAddr,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    attack::{Wrk, raise_nofile},
    edge::*,
    env::Env,
    gateway_process::*,
    harness::*,
    prober::{ProbeSummary, Prober},
};
use serde_json::json;

/// Every port the sandbox listens on: the reserved ones, those it declares in turn, one never
/// declared.
const LISTENING: [u16; 7] = [80, 443, 8080, 3000, 3001, 3002, 3999];
/// The declared port sets the re-registration loop cycles through.
const PORT_SETS: [&[u16]; 4] = [&[3000], &[3001], &[3000, 3002], &[3001, 3002]];

/// The gateway (`e`, its sandbox `target`) and what attacks it.
struct Field {
    _listeners: Vec<Listener>,
    _app: Backend,
    other: Sandbox,
    outside: OutsideClient,
    e: Env,
}

impl Field {
    fn new() -> Field {
        raise_nofile(100_000);
        let outside = OutsideClient::new();
        // The outside client's link is the public interface (the XDP edge guard's).
        let e = Env::new().sandbox("target", &[(3000, "HTTP")]).token("fire").public_interface(outside.host_ifname());
        let sb = e.sb();
        // 3000 is an HTTP app (the load goes there); every other port a TCP echo.
        let listeners: Vec<Listener> =
            LISTENING.iter().filter(|p| **p != 3000).map(|p| spawn_tcp_echo(sb, sb.sock(*p))).collect();

        // Positive control: without the data plane, the prober sees the listeners.
        let control = Prober::start("control", None, None, vec![sb.sock(3001)], Duration::from_millis(1));
        thread::sleep(Duration::from_millis(100));
        let control = control.finish();
        assert!(control.established > 10, "the prober sees an open port: {control:?}");

        let e = e.start();
        let app = {
            let _rt = e.rt.enter();
            spawn_backend(e.sb(), e.sb().addr(), 3000, Speaks::Http1)
        };
        let other = Sandbox::new();
        register(&e.gw, WS, "other", &other, &[(3000, "HTTP")]);
        Field { _listeners: listeners, _app: app, other, outside, e }
    }

    /// The probers: unmarked from the host, from the other sandbox and from outside to every
    /// listening port; marked (the gateway's mark) to 443 and the never-declared 3999.
    fn probers(&self) -> Vec<Prober> {
        let all: Vec<SocketAddr> = LISTENING.iter().map(|p| self.e.sb().sock(*p)).collect();
        let tick = Duration::from_millis(1);
        vec![
            Prober::start("host, unmarked", None, None, all.clone(), tick),
            Prober::start("other sandbox", Some(&self.other.ns), None, all.clone(), tick),
            Prober::start("outside (public interface)", Some(&self.outside.ns), None, all, tick),
            Prober::start(
                "host, gateway mark, 443 and never-declared 3999",
                None,
                Some(GATEWAY_MARK),
                vec![self.e.sb().sock(443), self.e.sb().sock(3999)],
                tick,
            ),
        ]
    }

    fn put_ports(&self, ports: &[u16]) -> u16 {
        let body = sandbox_body(self.e.sb(), &ports.iter().map(|p| (*p, "HTTP")).collect::<Vec<_>>());
        match self.e.gw.client().request(
            "PUT",
            &format!("/v1/workspaces/{WS}/sandboxes/target"),
            &[("content-type", "application/json")],
            Some(&serde_json::to_vec(&body).expect("json")),
        ) {
            Ok(r) => r.status,
            Err(_) => 0,
        }
    }
}

/// Stops the probers; asserts none connected (nor got a RST) and that they probed enough.
/// (On this shared 2-core machine a 1 ms tick often stretches to a few ms: the minimum is what a
/// loaded machine still reaches.)
fn judge(probers: Vec<Prober>, phase: &str, min_attempts: u64, took: Duration) -> Vec<ProbeSummary> {
    let all: Vec<ProbeSummary> = probers.into_iter().map(Prober::finish).collect();
    for p in &all {
        eprintln!(
            "figure: data plane under fire [{phase}, {:.1} s] {}: {} attempts ({:.0}/s), {} established, {} refused, {} dropped, {} errors {:?}",
            took.as_secs_f64(),
            p.name,
            p.attempts,
            p.attempts as f64 / took.as_secs_f64(),
            p.established,
            p.refused,
            p.dropped,
            p.errors,
            p.error_samples
        );
    }
    for p in &all {
        assert_eq!(p.established + p.refused, 0, "[{phase}] {}: probes got through: {:?}", p.name, p.lapses);
        assert!(p.attempts >= min_attempts, "[{phase}] {}: only {} attempts", p.name, p.attempts);
        assert!(p.errors * 100 <= p.attempts, "[{phase}] {}: too many failed attempts: {:?}", p.name, p.error_samples);
    }
    all
}

/// The gateway's own connections keep working (a positive control for the probes).
fn assert_gateway_reaches(f: &Field, port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match try_connect(f.e.sb().sock(port), Duration::from_millis(500), Some(GATEWAY_MARK)) {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "{what}: the gateway's mark cannot reach {port}: {e}"),
        }
    }
}

fn kill_and_restart(f: &mut Field, rounds: usize) {
    for _ in 0..rounds {
        f.e.gw.kill();
        // Dead for a while: the pinned programs enforce alone.
        thread::sleep(Duration::from_millis(300));
        f.e.gw.spawn();
        assert_gateway_reaches(f, 3000, "after a restart");
    }
}

fn reregister(f: &Field, duration: Duration) -> usize {
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < duration {
        let status = f.put_ports(PORT_SETS[n % PORT_SETS.len()]);
        assert_eq!(status, 200, "PUT target");
        n += 1;
    }
    f.put_ports(&[3000]);
    n
}

/// Zero-downtime upgrades under `wrk` load: `rounds` successive `serve --takeover`.
fn upgrade_under_load(f: &mut Field, rounds: usize) -> (usize, f64) {
    let wrk = Wrk::new(f.e.gw.https_addr(), &f.e.host, f.e.token(), "/port/3000/load", f.e.gw.dir());
    let wrk_run = {
        let script = wrk.script.clone();
        let url = format!("https://{}/port/3000/load", f.e.gw.https_addr());
        let secs = (rounds * 4 + 2).to_string();
        thread::spawn(move || {
            std::process::Command::new("wrk")
                .args(["-t1", "-c8", &format!("-d{secs}s"), "--timeout", "10s", "-s"])
                .arg(&script)
                .arg(url)
                .stdin(Stdio::null())
                .output()
                .expect("wrk")
        })
    };
    thread::sleep(Duration::from_millis(500));
    let mut current: Option<Child> = None;
    for i in 0..rounds {
        let log = f.e.gw.dir().join(format!("successor-{i}.log"));
        let out = fs::File::create(&log).expect("log");
        let err = out.try_clone().expect("log");
        let successor = gateway_command()
            .args(["serve", "--config"])
            .arg(f.e.gw.config_path())
            .args(["--takeover", "--drain-timeout", "5s"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn a successor");
        // The previous process exits once drained.
        let deadline = Instant::now() + Duration::from_secs(30);
        match current.take() {
            None => {
                while f.e.gw.try_wait_exit().is_none() {
                    assert!(
                        Instant::now() < deadline,
                        "the first process did not hand over:\n{}\n{}",
                        f.e.gw.log(),
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                    thread::sleep(Duration::from_millis(20));
                }
            }
            Some(mut prev) => loop {
                if prev.try_wait().expect("wait").is_some() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "successor {} did not hand over:\n{}",
                    i - 1,
                    fs::read_to_string(&log).unwrap_or_default()
                );
                thread::sleep(Duration::from_millis(20));
            },
        }
        current = Some(successor);
        assert_gateway_reaches(f, 3000, "after an upgrade");
        thread::sleep(Duration::from_millis(1500));
    }
    let out = wrk_run.join().expect("wrk thread");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:").and_then(|v| v.trim().parse::<f64>().ok()))
        .unwrap_or(0.0);
    let requests: usize = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in ").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or(0);
    assert!(!text.contains("Non-2xx"), "wrk saw failed answers during the upgrades:\n{text}");
    assert!(requests > 100, "too little load: {text}");
    // The last successor is ours to stop; the GatewayProcess has exited already.
    if let Some(mut last) = current {
        let _ = last.kill();
        let _ = last.wait();
    }
    // Back to a managed process on the same state (a plain restart: enforcement holds).
    f.e.gw.spawn();
    (requests, rps)
}

#[test]
fn no_probe_connects_while_the_gateway_is_killed_upgraded_and_reconfigured() {
    let mut f = Field::new();
    let rt = f.e.rt.handle().clone();
    let _rt = rt.enter();

    let (probers, t0) = (f.probers(), Instant::now());
    kill_and_restart(&mut f, 2);
    judge(probers, "SIGKILL + restart x2", 300, t0.elapsed());

    let (probers, t0) = (f.probers(), Instant::now());
    let puts = reregister(&f, Duration::from_secs(3));
    eprintln!("re-registrations: {puts} in 3 s");
    judge(probers, "re-registration loop", 300, t0.elapsed());
    assert!(puts >= 20, "only {puts} re-registrations");

    let (probers, t0) = (f.probers(), Instant::now());
    let (requests, rps) = upgrade_under_load(&mut f, 1);
    eprintln!("figure: upgrade under load: {requests} requests through the edge, {rps:.0} req/s");
    judge(probers, "upgrade under wrk load", 300, t0.elapsed());
}

#[test]
#[ignore = "soak: run by cargo xtask soak"]
fn soak_no_probe_connects_under_repeated_kills_upgrades_and_reconfiguration() {
    let mut f = Field::new();
    let rt = f.e.rt.handle().clone();
    let _rt = rt.enter();
    let mut totals = 0u64;

    let (probers, t0) = (f.probers(), Instant::now());
    kill_and_restart(&mut f, 20);
    totals += judge(probers, "SIGKILL + restart x20", 5_000, t0.elapsed()).iter().map(|p| p.attempts).sum::<u64>();

    let (probers, t0) = (f.probers(), Instant::now());
    let puts = reregister(&f, Duration::from_secs(30));
    eprintln!("re-registrations: {puts} in 30 s");
    totals += judge(probers, "re-registration loop 30 s", 5_000, t0.elapsed()).iter().map(|p| p.attempts).sum::<u64>();

    let (probers, t0) = (f.probers(), Instant::now());
    let (requests, rps) = upgrade_under_load(&mut f, 5);
    eprintln!("5 upgrades under load: {requests} requests, {rps:.0} req/s");
    totals += judge(probers, "5 upgrades under wrk load", 3_000, t0.elapsed()).iter().map(|p| p.attempts).sum::<u64>();

    // All at once: re-registrations while the gateway is killed and restarted.
    let (probers, t0) = (f.probers(), Instant::now());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (admin, sb_addr, ifname) = (f.e.gw.client(), f.e.sb().addr(), f.e.sb().link.host_ifname().to_string());
    let stop2 = stop.clone();
    let churn = thread::spawn(move || {
        let mut n = 0usize;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let ports = PORT_SETS[n % PORT_SETS.len()];
            let body = json!({"address": sb_addr.to_string(), "interface": ifname, "ports": ports.iter().map(|p| json!({"target": p})).collect::<Vec<_>>()});
            let _ = admin.request(
                "PUT",
                &format!("/v1/workspaces/{WS}/sandboxes/target"),
                &[("content-type", "application/json")],
                Some(&serde_json::to_vec(&body).expect("json")),
            );
            n += 1;
        }
        n
    });
    kill_and_restart(&mut f, 10);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let n = churn.join().expect("churn");
    eprintln!("re-registrations during kills: {n}");
    totals +=
        judge(probers, "re-registration during SIGKILLs", 3_000, t0.elapsed()).iter().map(|p| p.attempts).sum::<u64>();
    eprintln!("figure: data plane under fire (soak): {totals} probes in all, none connected");
}

/// A port removed while a connection to it is open: the established flow keeps passing (the
/// programs only judge new connections; README "established TCP ... pass"), new connections
/// are dropped at once, and through the edge a new request to the port is refused (404) while
/// a WebSocket opened before keeps working until it ends.
#[test]
fn a_removed_port_keeps_established_flows_and_refuses_new_ones() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let e = Env::new().sandbox("web", &[(3000, "HTTP"), (3001, "TCP")]).token("removal").start();
    let Env { rt, host, bearer, client, .. } = &e;
    let sb = e.sb();
    let _rt = rt.enter();
    let _echo = spawn_tcp_echo(sb, sb.sock(3001));
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);

    // Kernel level: a marked (gateway) connection to 3001, open across the removal.
    let mut flow = assert_reachable(Origin::gateway(), sb.sock(3001), "declared port");
    assert_eq!(read_greeting(&mut flow).expect("greeting"), "port 3001");
    // Edge level: a WebSocket to 3000 and a kept-alive HTTP/1.1 connection.
    let (mut ws, mut keepalive) = rt.block_on(async {
        let ws = open_websocket(client, host, "/port/3000/ws", bearer).await;
        let mut keepalive = client.h1(host).await;
        let r = send1(
            &mut keepalive,
            build(http::Method::GET, host, "/port/3000/before", &[("authorization", bearer)], empty()),
        )
        .await;
        assert_eq!(r.status, 200);
        (ws, keepalive)
    });

    // Both ports removed (3002 declared instead).
    e.register(&[(3002, "HTTP")]);

    flow.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    for i in 0..3 {
        let msg = format!("still flowing {i}\n");
        flow.write_all(msg.as_bytes()).expect("write on the established flow");
        let mut buf = vec![0u8; msg.len()];
        flow.read_exact(&mut buf).expect("the established flow still echoes");
        assert_eq!(buf, msg.as_bytes());
    }
    assert_unreachable(Origin::gateway(), sb.sock(3001), "a new connection to the removed port");
    assert_unreachable(Origin::gateway(), sb.sock(3000), "a new connection to the removed app port");
    rt.block_on(async {
        ws.send(Message::text("after removal")).await.expect("send on the WebSocket");
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next()).await.expect("echo in time");
        assert_eq!(back.expect("message").expect("ok").into_text().expect("text").as_str(), "after removal");
        // A new request, even on a connection that reached the port before, is refused.
        let r = send1(
            &mut keepalive,
            build(http::Method::GET, host, "/port/3000/after", &[("authorization", bearer)], empty()),
        )
        .await;
        r.assert_error(404, "ROUTE_NOT_FOUND");
        let r = client.get(host, "/port/3000/after", &[("authorization", bearer)]).await;
        r.assert_error(404, "ROUTE_NOT_FOUND");
    });
    drop(flow);
}
