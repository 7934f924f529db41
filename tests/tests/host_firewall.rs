//! Sandboxes are kept off the host: the real gateway process, a registered sandbox in a network
//! namespace, and host services bound to `0.0.0.0`. New connections from the sandbox to any
//! address of the host are dropped in the kernel (`sandbox_out`, reason `drop_host`) unless
//! `dataplane.host_allow` has the port; connections the gateway opens into the sandbox work
//! both ways; an address the host gains after the gateway started is protected too.
//!
//! Every check has its control: the same listener is reached from the host itself and from an
//! unregistered namespace (no program on its interface), so a drop is the data plane's doing.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use gateway::telemetry::metrics::sum_samples;
use gateway_tests::{edge::*, env::Env, gateway_process::*, harness::*};

/// A listener on every host address (`0.0.0.0`, a free port).
fn host_listener() -> Listener {
    spawn_tcp_echo(Place::Host, SocketAddr::from(([0, 0, 0, 0], free_port())))
}

fn dump(pins: &BpffsDir) -> serde_json::Value {
    let out = run_gateway(&["dataplane", "dump", "--json", "--bpffs", pins.as_str()]);
    assert!(out.status.success(), "dataplane dump: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("dump is JSON")
}

fn counter(d: &serde_json::Value, hook: &str, reason: &str) -> u64 {
    d["counters"]
        .as_array()
        .expect("counters")
        .iter()
        .filter(|c| c["hook"] == hook && c["reason"] == reason)
        .map(|c| c["packets"].as_u64().expect("packets"))
        .sum()
}

fn host_addresses(pins: &BpffsDir) -> Vec<String> {
    dump(pins)["hostAddresses"]
        .as_array()
        .expect("hostAddresses")
        .iter()
        .map(|a| a.as_str().expect("address").to_string())
        .collect()
}

/// Waits until `GW_HOST_ADDRS` holds `addr` (or no longer does), as the netlink thread follows.
fn wait_host_address(pins: &BpffsDir, addr: Ipv4Addr, present: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let all = host_addresses(pins);
        if all.contains(&addr.to_string()) == present {
            return;
        }
        assert!(Instant::now() < deadline, "{addr} present={present} expected in GW_HOST_ADDRS: {all:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A UDP query from inside `ns` to `to`: the reply's bytes, or `None` when nothing came back.
fn udp_query(ns: &Netns, to: SocketAddr) -> Option<Vec<u8>> {
    ns.run(move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
        let mut buf = [0u8; 64];
        for _ in 0..2 {
            s.send_to(b"query", to).expect("send");
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Some(buf[..n].to_vec());
            }
        }
        None
    })
}

/// A UDP echo on `0.0.0.0:port` of the host, answering "answer" to every datagram.
fn udp_echo(port: u16) -> (std::thread::JoinHandle<()>, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::{Arc, atomic::AtomicBool, atomic::Ordering};
    let s = UdpSocket::bind(("0.0.0.0", port)).expect("bind the host's UDP echo");
    s.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((_, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(b"answer", from);
            }
        }
    });
    (t, stop)
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("0.0.0.0:0").expect("bind").local_addr().expect("addr").port()
}

#[test]
fn a_sandbox_reaches_only_allowed_host_ports_and_the_gateway_still_reaches_it() {
    let allowed = host_listener();
    let closed = host_listener();
    let udp_port = free_udp_port();
    let udp_closed = free_udp_port();
    // `[dataplane]` is the last section of the test configuration: these keys land in it.
    let e = Env::new()
        .sandbox("web", &[(3000, "HTTP")])
        .token("hostfw")
        .config(&format!("host_allow = [\"tcp/{}\", \"udp/{udp_port}\"]\n", allowed.port()))
        .start();
    let sb = e.sb();
    // Another address of the host: the host side of an unregistered namespace's link.
    let other = Sandbox::new();
    let via_link = |port: u16| sb.link.host_sock(port);
    let via_other = |port: u16| SocketAddr::new(other.link.host_addr().into(), port);

    // Controls: the listener answers the host itself and a namespace with no program attached.
    assert_reachable(Origin::host(), SocketAddr::from(([127, 0, 0, 1], closed.port())), "from the host");
    assert_reachable(&other, via_other(closed.port()), "from an unregistered namespace");
    // Both control connections are counted (accept trails the handshake).
    let before = closed.wait_accepted(2, Duration::from_secs(5));
    assert_eq!(before, 2, "the listener accepted both control connections");

    let d0 = dump(&e.pins);
    assert_unreachable(sb, via_link(closed.port()), "host service via the sandbox link's host address");
    assert_unreachable(sb, via_other(closed.port()), "host service via another host address");
    assert_eq!(closed.accepted(), before, "the host service saw no connection from the sandbox");
    let d1 = dump(&e.pins);
    assert!(
        counter(&d1, "sandbox_out", "drop_host") >= counter(&d0, "sandbox_out", "drop_host") + 2,
        "counted under drop_host: {d1:#}"
    );

    // The allow-list: the port is reachable on every host address.
    assert_reachable(sb, via_link(allowed.port()), "allowed port via the link's host address");
    assert_reachable(sb, via_other(allowed.port()), "allowed port via another host address");
    assert!(
        counter(&dump(&e.pins), "sandbox_out", "pass_host_allowed") >= 2,
        "counted under pass_host_allowed: {:#}",
        dump(&e.pins)
    );
    assert!(
        dump(&e.pins)["hostAllow"].as_array().expect("hostAllow").contains(&format!("tcp/{}", allowed.port()).into()),
        "the allow-list is in the dump"
    );

    // UDP: a query to an allowed port is answered (the reply comes back in as a flow the
    // sandbox started); to another port it never reaches the host.
    let (echo, stop) = udp_echo(udp_port);
    let (echo_closed, stop_closed) = udp_echo(udp_closed);
    assert_eq!(udp_query(&other.ns, via_other(udp_closed)).as_deref(), Some(&b"answer"[..]), "control");
    assert_eq!(udp_query(&sb.ns, via_link(udp_port)).as_deref(), Some(&b"answer"[..]), "allowed UDP port");
    assert_eq!(udp_query(&sb.ns, via_link(udp_closed)), None, "UDP to a host port not allowed");
    for s in [stop, stop_closed] {
        s.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let _ = (echo.join(), echo_closed.join());

    // The gateway's own connections into the sandbox work both ways: a marked connection (the
    // greeting comes back over it) and a request proxied through the edge.
    let _api = spawn_tcp_echo(sb, sb.sock(8080));
    let mut s = assert_reachable(Origin::gateway(), sb.sock(8080), "the gateway's connection into the sandbox");
    assert_eq!(read_greeting(&mut s).expect("greeting back from the sandbox"), "port 8080");
    let _rt = e.rt.enter();
    let _app = spawn_backend(sb, sb.addr(), 3000, Speaks::Http1);
    e.rt.block_on(async {
        let r = e.client.get(&e.host, "/port/3000/hello", &[("authorization", &e.bearer)]).await;
        assert_eq!(r.status, 200, "a request proxied into the sandbox: {}", r.text());
    });

    // The reasons are exported by name.
    let metrics = e.gw.anonymous_client().get("/metrics").text();
    let verdicts = |reason: &str| {
        sum_samples(&metrics, "gateway_dataplane_verdicts_total", &[("hook", "sandbox_out"), ("reason", reason)])
    };
    assert!(verdicts("drop_host") >= 3, "drop_host in /metrics:\n{metrics}");
    assert!(verdicts("pass_host_allowed") >= 3, "pass_host_allowed in /metrics:\n{metrics}");
}

#[test]
fn an_address_the_host_gains_after_start_is_protected_too() {
    let service = host_listener();
    let e = Env::new().sandbox("web", &[(3000, "HTTP")]).start();
    let sb = e.sb();
    assert!(
        host_addresses(&e.pins).contains(&sb.link.host_addr().to_string()),
        "the link's host address is loaded at start"
    );

    // A link made after the gateway started: its host-side address is new to the gateway.
    let later = Sandbox::new();
    let addr = later.link.host_addr();
    wait_host_address(&e.pins, addr, true);
    assert_reachable(&later, SocketAddr::new(addr.into(), service.port()), "control: no program on that link");
    assert_unreachable(sb, SocketAddr::new(addr.into(), service.port()), "an address added after start");

    // An address added to an existing interface, then removed: the map follows both ways.
    let extra = Ipv4Addr::new(198, 18, 0, 77);
    let ifname = later.link.host_ifname().to_string();
    let out = std::process::Command::new("ip")
        .args(["addr", "add", &format!("{extra}/32"), "dev", &ifname])
        .output()
        .expect("ip addr add");
    assert!(out.status.success(), "ip addr add: {}", String::from_utf8_lossy(&out.stderr));
    wait_host_address(&e.pins, extra, true);
    assert_unreachable(sb, SocketAddr::new(extra.into(), service.port()), "an address added to a link");
    let out = std::process::Command::new("ip")
        .args(["addr", "del", &format!("{extra}/32"), "dev", &ifname])
        .output()
        .expect("ip addr del");
    assert!(out.status.success(), "ip addr del: {}", String::from_utf8_lossy(&out.stderr));
    wait_host_address(&e.pins, extra, false);
    assert!(host_addresses(&e.pins).contains(&addr.to_string()), "the link's own address stays");

    // The link goes away: so does its address.
    drop(later);
    wait_host_address(&e.pins, addr, false);
}
