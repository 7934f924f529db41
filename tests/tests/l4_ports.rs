//! Public TCP ports end to end: a client in its own namespace on the public side connects to
//! the host's public address on the port the gateway assigned; the kernel steers it to the
//! gateway's one listener (sk_lookup), the edge guard on the public interface drops SYNs from
//! sources outside `allowFrom` and floods beyond the per-source rate, and the gateway splices
//! the bytes to the app in the sandbox's namespace (connected with its mark, admitted by tcx).
//!
//! Run (root): `cargo build -p gateway && cargo test -p gateway-tests --test l4_ports -- --test-threads=1 --nocapture`.

use gateway_tests::{
    edge::WS,
    env::Env,
    harness::{OutsideClient, try_connect_from},
    tcp_apps::{FLOOD_WRITTEN, GREETING, TcpApp, echo, flood, hex, pattern, proxy_v2, reset_after_a_line, sink},
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{Shutdown, TcpStream},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

/// The port range of these tests' gateways.
const RANGE: &str = "21000-21099";

fn env(client: &OutsideClient, ports: &[(u16, &str)], dataplane: &str) -> Env {
    let mut b = Env::new()
        .sandbox("db", ports)
        .token("l4")
        .public_interface(client.host_ifname())
        .config(&format!("\n[l4]\nport_range = \"{RANGE}\"\naddress = \"{}\"\n", client.host_addr()));
    if !dataplane.is_empty() {
        b = b.dataplane(dataplane);
    }
    b.start()
}

/// PUT of the sandbox with these ports (`expose` given per port as JSON, or null).
fn put(e: &Env, ports: &[(u16, &str, Value)]) -> gateway_tests::gateway_process::Response {
    let sb = e.sb();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(target, proto, expose)| match expose {
            Value::Null => json!({"target": target, "protocol": proto}),
            x => json!({"target": target, "protocol": proto, "expose": x}),
        })
        .collect();
    let body = json!({"address": sb.addr().to_string(), "interface": sb.link.host_ifname(), "ports": ports});
    e.gw.client().put_json(&e.sandbox_path(), &body)
}

/// The public port of `target` in a sandbox as answered.
fn public_port(answer: &Value, target: u16) -> u16 {
    let port = answer["ports"].as_array().expect("ports").iter().find(|p| p["target"] == target).expect("port");
    let public = &port["public"];
    let n = public["port"].as_u64().unwrap_or_else(|| panic!("no public port for {target}: {answer}"));
    assert_eq!(public["endpoint"], format!("sbx-db-{WS}.local.gw.test:{n}"), "{answer}");
    u16::try_from(n).expect("port")
}

fn only(client: &OutsideClient) -> Value {
    json!({"allowFrom": [format!("{}/32", client.client_addr())]})
}

fn connect(client: &OutsideClient, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let s = try_connect_from(&client.ns, client.host_sock(port), timeout)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

fn metrics(e: &Env) -> String {
    e.gw.anonymous_client().get("/metrics").text()
}

#[test]
fn public_ports_carry_bytes_from_allowed_sources_only() {
    let client = OutsideClient::new();
    let ports = [(5432, "TCP"), (5433, "TCP"), (5434, "TCP"), (5435, "TLS"), (3000, "HTTP")];
    let e = env(&client, &ports, "");
    let sb = e.sb();
    let _apps = [
        TcpApp::spawn(sb, 5432, sink),
        TcpApp::spawn(sb, 5433, echo),
        TcpApp::spawn(sb, 5434, proxy_v2),
        TcpApp::spawn(sb, 5435, reset_after_a_line),
    ];

    // Bad requests are refused with the reason, and change nothing.
    let refused = |expose: Value, proto: &str| {
        let r = put(&e, &[(5432, proto, expose)]);
        assert_eq!(r.status, 400, "{}", r.text());
        r.json()["error"]["message"].as_str().unwrap_or_default().to_string()
    };
    assert!(refused(json!({}), "TCP").contains("allowFrom is required"));
    assert!(refused(json!({"allowFrom": ["10.0.0.0/33"]}), "TCP").contains("\"10.0.0.0/33\""));
    assert!(refused(json!({"allowFrom": ["10.1.2.3/8"]}), "TCP").contains("10.0.0.0/8"));
    assert!(refused(json!({"allowFrom": ["0.0.0.0/0"]}), "HTTP").contains("\"TCP\" or \"TLS\""));
    let r = put(&e, &[(5432, "TCP", json!({"allowFrom": ["0.0.0.0/0"], "proxyProtocol": "v1"}))]);
    assert_eq!(r.status, 400, "{}", r.text());

    let exposed = |proxy: &str| {
        vec![
            (5432, "TCP", only(&client)),
            (5433, "TCP", only(&client)),
            (5434, "TCP", json!({"allowFrom": [format!("{}/32", client.client_addr())], "proxyProtocol": proxy})),
            (5435, "TLS", json!({"allowFrom": ["0.0.0.0/0"]})),
            (3000, "HTTP", Value::Null),
        ]
    };
    let r = put(&e, &exposed("v2"));
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let (sink_port, echo_port, proxy_port, rst_port) = (
        public_port(&answer, 5432),
        public_port(&answer, 5433),
        public_port(&answer, 5434),
        public_port(&answer, 5435),
    );
    assert!(
        answer["ports"].as_array().expect("ports").iter().any(|p| p["target"] == 3000 && p.get("public").is_none())
    );
    // Stable across re-registration.
    let again = put(&e, &exposed("v2")).json();
    assert_eq!(public_port(&again, 5432), sink_port);
    assert_eq!(public_port(&again, 5433), echo_port);

    // A server-first app, 8 MiB up, the answer after the client's half-close.
    let data = pattern(8 << 20);
    let expected = format!("{} {}\n", data.len(), hex(&Sha256::digest(&data)));
    let answer = client.ns.run(|| {
        let s = connect(&client, sink_port, Duration::from_secs(5)).expect("connect to the public port");
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut line = String::new();
        r.read_line(&mut line).expect("greeting");
        assert_eq!(line, GREETING, "the app speaks first, before the client sent a byte");
        (&s).write_all(&data).expect("send");
        s.shutdown(Shutdown::Write).expect("half-close");
        line.clear();
        r.read_line(&mut line).expect("answer after SHUT_WR");
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).expect("end");
        assert!(rest.is_empty());
        line
    });
    assert_eq!(answer, expected, "every byte arrived, in order; the app answered after the half-close");

    // 1 GiB each way at once, through the echo app.
    const GIB: usize = 1 << 30;
    let started = Instant::now();
    let (sent, received) = client.ns.run(|| {
        let s = connect(&client, echo_port, Duration::from_secs(5)).expect("connect");
        let writer = s.try_clone().expect("clone");
        let send = std::thread::spawn(move || {
            let chunk = pattern(1 << 20);
            let mut hash = Sha256::new();
            let mut w = &writer;
            for _ in 0..GIB / chunk.len() {
                w.write_all(&chunk).expect("write");
                hash.update(&chunk);
            }
            writer.shutdown(Shutdown::Write).expect("half-close");
            hash.finalize()
        });
        let mut hash = Sha256::new();
        let (mut total, mut buf, mut r) = (0usize, vec![0u8; 1 << 20], &s);
        loop {
            let n = r.read(&mut buf).expect("read");
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n;
        }
        assert_eq!(total, GIB, "the whole echo came back");
        (send.join().expect("writer"), hash.finalize())
    });
    assert_eq!(hex(&sent), hex(&received), "1 GiB each way with equal SHA-256");
    eprintln!("figure: 1 GiB each way through a public port (splice) in {:.1} s", started.elapsed().as_secs_f64());

    // PROXY protocol v2: the app sees the client's address and the public port.
    let line = client.ns.run(|| {
        let s = connect(&client, proxy_port, Duration::from_secs(5)).expect("connect");
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).expect("answer");
        line
    });
    assert!(line.starts_with(&format!("proxy {}:", client.client_addr())), "{line}");
    assert!(line.ends_with(&format!(" -> {}:{proxy_port}\n", client.host_addr())), "{line}");

    // A reset by the app reaches the client as a reset.
    let err = client.ns.run(|| {
        let mut s = connect(&client, rst_port, Duration::from_secs(5)).expect("connect");
        s.write_all(b"bye\n").expect("write");
        let mut buf = [0u8; 16];
        s.read(&mut buf).expect_err("the app reset the connection")
    });
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");

    // Another allowFrom applies to open connections and to the next ones: an open connection
    // to the port is reset, one to a port left as it was carries on, and the client's next SYN
    // gets no answer.
    let (held, kept) = client.ns.run(|| {
        let held = connect(&client, sink_port, Duration::from_secs(5)).expect("connect");
        let mut line = String::new();
        BufReader::new(&held).read_line(&mut line).expect("greeting");
        let kept = connect(&client, echo_port, Duration::from_secs(5)).expect("connect");
        (held, kept)
    });
    let mut other = exposed("v2");
    other[0].2 = json!({"allowFrom": ["203.0.113.0/24"]});
    assert_eq!(put(&e, &other).status, 200);
    held.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let err = (&held).read(&mut [0u8; 16]).expect_err("the open connection is cut");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    (&kept).write_all(b"still here\n").expect("write");
    let mut line = String::new();
    BufReader::new(&kept).read_line(&mut line).expect("echo");
    assert_eq!(line, "still here\n", "a connection to an unchanged port carries on");
    drop(kept);
    let dropped =
        |text: &str| metric(text, "gateway_dataplane_verdicts_total{hook=\"edge\",reason=\"drop_edge_not_allowed\"");
    let before = dropped(&metrics(&e));
    let r = client.ns.run(|| connect(&client, sink_port, Duration::from_millis(700)).map(|_| ()));
    let err = r.expect_err("a source outside allowFrom never connects");
    assert_eq!(err.kind(), io::ErrorKind::TimedOut, "no SYN-ACK, not a reset: {err}");
    let text = metrics(&e);
    assert!(dropped(&text) > before, "counted by the edge guard");
    let per_port = format!("gateway_l4_syns_total{{port=\"{sink_port}\",result=\"not_allowed\"}}");
    assert!(metric(&text, &per_port) >= 1.0, "counted on the port: {text}");
    assert_eq!(put(&e, &exposed("v2")).status, 200);
    client.ns.run(|| connect(&client, sink_port, Duration::from_secs(5))).expect("allowed again at once");

    let text = metrics(&e);
    assert!(
        metric(
            &text,
            "gateway_l4_connections_total{workspace=\"acme\",sandbox=\"db\",port=\"5433\",result=\"accepted\",engine=\"splice\"}"
        ) >= 1.0,
        "{text}"
    );
    assert!(
        metric(&text, "gateway_l4_bytes_total{workspace=\"acme\",sandbox=\"db\",port=\"5433\",direction=\"up\"}")
            >= GIB as f64
    );
    // The bulk went through the kernel: only the first read of each direction was copied.
    let spliced = metric(&text, "gateway_l4_spliced_bytes_total ");
    assert!(spliced >= (2 * GIB - (1 << 20)) as f64, "spliced {spliced} of 2 GiB: {text}");

    // Deleting the sandbox closes its ports and the connections open to them; the ports are
    // held back from the next sandbox.
    let open = client.ns.run(|| connect(&client, echo_port, Duration::from_secs(5)).expect("connect"));
    (&open).write_all(b"x\n").expect("write");
    BufReader::new(&open).read_line(&mut String::new()).expect("echo");
    assert_eq!(e.gw.client().delete(&e.sandbox_path()).status, 204);
    open.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let err = (&open).read(&mut [0u8; 16]).expect_err("the open connection is cut");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionReset, "{err}");
    let r = client.ns.run(|| connect(&client, sink_port, Duration::from_millis(700)).map(|_| ()));
    assert!(r.is_err(), "the port of a deleted sandbox is closed");
    let released = [sink_port, echo_port, proxy_port, rst_port];
    let next = put(&e, &[(5432, "TCP", only(&client))]);
    assert_eq!(next.status, 200);
    // Registered again under the same name: its port comes back (the same owner may reuse it).
    assert_eq!(public_port(&next.json(), 5432), sink_port);
    assert!(released.contains(&sink_port));
}

#[test]
fn slow_readers_are_bounded_and_syn_floods_are_cut() {
    let client = OutsideClient::new();
    let e = env(&client, &[(6000, "TCP")], "syn_rate = 20\nsyn_burst = 20");
    let _app = TcpApp::spawn(e.sb(), 6000, flood);
    let r = put(&e, &[(6000, "TCP", only(&client))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let port = public_port(&r.json(), 6000);

    // A slow reader (64 KiB every 100 ms) against an app writing as fast as it can: what the
    // app gets written is the path's buffers, then only what the reader takes.
    let (at_2s, at_4s) = client.ns.run(|| {
        let mut s = connect(&client, port, Duration::from_secs(5)).expect("connect");
        let started = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        let mut marks = Vec::new();
        while started.elapsed() < Duration::from_secs(4) {
            let _ = s.read(&mut buf);
            std::thread::sleep(Duration::from_millis(100));
            if marks.is_empty() && started.elapsed() >= Duration::from_secs(2) {
                marks.push(FLOOD_WRITTEN.load(Ordering::Relaxed));
            }
        }
        (marks[0], FLOOD_WRITTEN.load(Ordering::Relaxed))
    });
    eprintln!("figure: slow reader: the app wrote {} MiB after 2 s, {} MiB after 4 s", at_2s >> 20, at_4s >> 20);
    assert!(at_4s < 48 << 20, "bounded by the sockets' buffers and one pipe: {at_4s} bytes");
    assert!(at_4s - at_2s < 8 << 20, "then only what the reader takes: {} bytes in 2 s", at_4s - at_2s);

    // A SYN flood from one source: beyond the burst, about 20 new connections a second pass.
    let rate_drops =
        |text: &str| metric(text, "gateway_dataplane_verdicts_total{hook=\"edge\",reason=\"drop_edge_rate\"");
    let before = rate_drops(&metrics(&e));
    let started = Instant::now();
    // 50 threads of 4 attempts each, every attempt given 100 ms: 200 SYNs within about half a
    // second (a dropped SYN's retransmission comes after 1 s, past every attempt).
    let attempts: Vec<bool> = std::thread::scope(|s| {
        let threads: Vec<_> = (0..50)
            .map(|_| {
                s.spawn(|| {
                    (0..4)
                        .map(|_| {
                            try_connect_from(&client.ns, client.host_sock(port), Duration::from_millis(100)).is_ok()
                        })
                        .collect::<Vec<bool>>()
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("flood thread")).collect()
    });
    let ok = attempts.iter().filter(|a| **a).count() as u32;
    let failed = attempts.len() as u32 - ok;
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!(
        "figure: SYN flood of 200 connections in {elapsed:.1} s: {ok} passed, {failed} dropped (syn_rate 20, burst 20)"
    );
    assert!(f64::from(ok) <= 20.0 + 20.0 * elapsed + 5.0, "{ok} passed in {elapsed:.1} s");
    // However slow this machine made the flood, most of it exceeded the rate.
    assert!(failed > 0 && (elapsed > 3.0 || failed >= 100), "{failed} dropped in {elapsed:.1} s");
    assert!(rate_drops(&metrics(&e)) >= before + f64::from(failed), "every dropped SYN is counted");
    // The source may connect again once its bucket refills.
    std::thread::sleep(Duration::from_millis(1500));
    client.ns.run(|| connect(&client, port, Duration::from_secs(3))).expect("connects again after the flood");
}

/// The gateway's pid, from its admin API's `/live`.
fn live_pid(e: &Env) -> u64 {
    e.gw.client().get("/live").json()["pid"].as_u64().expect("pid")
}

/// One line through the echo app on a new connection.
fn echo_once(client: &OutsideClient, port: u16) -> Result<(), String> {
    let mut s = connect(client, port, Duration::from_secs(3)).map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"ping\n").map_err(|e| format!("write: {e}"))?;
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).map_err(|e| format!("read: {e}"))?;
    if &buf != b"ping\n" {
        return Err(format!("echoed {buf:?}"));
    }
    Ok(())
}

#[test]
fn a_restart_hands_the_public_ports_over_and_keeps_open_connections() {
    let client = OutsideClient::new();
    let mut e = env(&client, &[(5433, "TCP")], "");
    let _echo = TcpApp::spawn(e.sb(), 5433, echo);
    let r = put(&e, &[(5433, "TCP", only(&client))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let port = public_port(&r.json(), 5433);

    // A connection opened on the old process, and a stream of new ones during the restart.
    let mut held = connect(&client, port, Duration::from_secs(3)).expect("connect");
    held.write_all(b"before\n").expect("write");
    let mut buf = [0u8; 7];
    held.read_exact(&mut buf).expect("echo");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let (ok, failed, new_pid) = std::thread::scope(|scope| {
        let hammer = scope.spawn(|| {
            let (mut ok, mut failed) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match echo_once(&client, port) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        });
        let old_pid = live_pid(&e);
        // SAFETY: kill(2) of our own child.
        unsafe {
            libc::kill(old_pid as libc::pid_t, libc::SIGUSR2);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let new_pid = loop {
            let pid = live_pid(&e);
            if pid != old_pid {
                break pid;
            }
            assert!(Instant::now() < deadline, "no successor took over:\n{}", e.gw.log());
            std::thread::sleep(Duration::from_millis(50));
        };
        // The held connection stays with the draining old process.
        held.write_all(b"during\n").expect("write to the held connection");
        let mut buf = [0u8; 7];
        held.read_exact(&mut buf).expect("the held connection still carries bytes");
        assert_eq!(&buf, b"during\n");
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let (ok, failed) = hammer.join().expect("hammer");
        (ok, failed, new_pid)
    });
    assert!(failed.is_empty(), "connections failed during the restart: {failed:?}\n{}", e.gw.log());
    assert!(ok > 20, "{ok} connections");
    drop(held);
    // Its last connection closed, the old process exits.
    let deadline = Instant::now() + Duration::from_secs(10);
    while e.gw.try_wait_exit().is_none() {
        assert!(Instant::now() < deadline, "the old process did not exit once drained:\n{}", e.gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    echo_once(&client, port).expect("the successor serves the port");
    // SAFETY: kill(2) of the successor this test caused to exist.
    unsafe {
        libc::kill(new_pid as libc::pid_t, libc::SIGKILL);
    }
}
