//! Self-test of the privileged test harness (`gateway_tests::harness`), without any BPF:
//! namespaces, veth links, routing through the host, listeners, clients, cleanup.
//!
//! Needs root: `cargo test -p gateway-tests --test harness_selftest`.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

use gateway_tests::harness::*;

const MARK: u32 = 0x6777;

fn ip_netns_list() -> String {
    let out = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip_link_names() -> HashSet<String> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output().expect("ip link show");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            // "7: gh1234@if2: <...>"
            let name = l.split(": ").nth(1)?;
            Some(name.split('@').next()?.to_owned())
        })
        .collect()
}

fn netns_listed(name: &str) -> bool {
    ip_netns_list().lines().any(|l| l.split_whitespace().next() == Some(name))
}

fn echo_roundtrip(s: &mut std::net::TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read echo");
    assert_eq!(back, msg);
}

fn http_get(s: &mut std::net::TcpStream, host: &str, path: &str) -> String {
    write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").expect("write");
    s.set_read_timeout(Some(REACH_TIMEOUT)).expect("timeout");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read response");
    out
}

#[test]
fn host_reaches_sandbox_listener_with_and_without_mark() {
    let sb = Sandbox::new();
    let app = spawn_tcp_echo(&sb, sb.sock(3000));
    assert_eq!(app.local_addr(), sb.sock(3000));

    let mut plain = assert_reachable(Origin::host(), sb.sock(3000), "echo from host, no mark");
    assert_eq!(read_greeting(&mut plain).expect("greeting"), "port 3000");
    echo_roundtrip(&mut plain, b"hello\n");
    assert_eq!(plain.local_addr().expect("local").ip(), sb.link.host_addr());

    let mut marked = assert_reachable(Origin::host_marked(MARK), sb.sock(3000), "echo from host, marked");
    assert_eq!(read_greeting(&mut marked).expect("greeting"), "port 3000");
    echo_roundtrip(&mut marked, b"marked\n");

    // The plain helpers too.
    let s = try_connect(sb.sock(3000), REACH_TIMEOUT, Some(MARK)).expect("try_connect marked");
    drop(s);
    assert_eq!(app.wait_accepted(3, REACH_TIMEOUT), 3);

    // A port nothing listens on answers RST: that is "refused", not "dropped".
    assert_refused(Origin::host(), sb.sock(3001), "closed port in the sandbox");
    assert!(matches!(probe(Origin::host(), sb.sock(3001), DROP_TIMEOUT), Reach::Refused));

    // HTTP listener on 0.0.0.0:8080 inside the sandbox, and one on its loopback only.
    let api = spawn_http_ok(&sb.ns, 8080, "");
    let local_only = spawn_http_ok_at(&sb, "127.0.0.1:5173".parse().expect("addr"), "vite on {port}");
    let mut h = assert_reachable(Origin::host_marked(MARK), sb.sock(8080), "sandbox API port");
    let resp = http_get(&mut h, "sbx-a-ws.local.gw.test", "/v1/hello");
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(resp.contains("X-Harness-Port: 8080\r\n"), "{resp}");
    assert!(resp.ends_with("\r\n\r\nport 8080\n"), "{resp}");
    let reqs = api.requests();
    assert_eq!(reqs.len(), 1);
    assert!(reqs[0].starts_with("GET /v1/hello HTTP/1.1\r\n"), "{}", reqs[0]);
    assert!(reqs[0].contains("Host: sbx-a-ws.local.gw.test"), "{}", reqs[0]);

    // Bound to 127.0.0.1 inside the sandbox: refused from outside, fine from inside.
    assert_refused(Origin::host(), sb.sock(5173), "app bound to localhost");
    let mut inside = sb
        .ns
        .run(|| try_connect("127.0.0.1:5173".parse().expect("addr"), REACH_TIMEOUT, None))
        .expect("loopback inside the sandbox");
    let resp = http_get(&mut inside, "localhost", "/");
    assert!(resp.ends_with("vite on 5173"), "{resp}");
    assert_eq!(local_only.wait_accepted(1, REACH_TIMEOUT), 1);
}

#[test]
fn http_listener_keeps_connections_alive() {
    let sb = Sandbox::new();
    let app = spawn_http_ok(&sb.ns, 0, "hello {port}");
    let mut s = assert_reachable(Origin::host(), sb.sock(app.port()), "http app");
    s.set_read_timeout(Some(REACH_TIMEOUT)).expect("timeout");
    for i in 0..3 {
        write!(s, "POST /n/{i} HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nabcde").expect("w");
        let mut buf = vec![0u8; 4096];
        let mut got = String::new();
        let want = format!("hello {}", app.port());
        while !got.ends_with(&want) {
            let n = s.read(&mut buf).expect("read");
            assert!(n > 0, "closed early: {got}");
            got.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(got.contains("Connection: keep-alive"), "{got}");
    }
    assert_eq!(app.wait_accepted(1, REACH_TIMEOUT), 1);
    assert_eq!(app.requests().len(), 3);
    s.shutdown(Shutdown::Both).ok();
}

#[test]
fn sandboxes_reach_each_other_through_the_host() {
    let a = Sandbox::new();
    let b = Sandbox::new();
    let la = spawn_tcp_echo(&a, a.sock(4000));
    let lb = spawn_tcp_echo(&b, b.sock(4001));

    let mut ab = assert_reachable(&b, a.sock(4000), "sandbox b -> sandbox a");
    assert_eq!(read_greeting(&mut ab).expect("greeting"), "port 4000");
    // Routed, not NATed: a sees b's own address.
    assert_eq!(ab.local_addr().expect("local").ip(), b.addr());
    echo_roundtrip(&mut ab, b"b to a");

    let mut ba = assert_reachable(Origin::from(&a).with_mark(MARK), b.sock(4001), "a -> b marked");
    assert_eq!(read_greeting(&mut ba).expect("greeting"), "port 4001");

    let s = try_connect_from(&a.ns, b.sock(4001), REACH_TIMEOUT).expect("try_connect_from");
    assert_eq!(s.local_addr().expect("local").ip(), a.addr());
    assert_eq!(la.wait_accepted(1, REACH_TIMEOUT), 1);
    assert_eq!(lb.wait_accepted(2, REACH_TIMEOUT), 2);

    // The sandbox also reaches the host side of its own link.
    let host_l = spawn_tcp_echo(Place::Host, a.link.host_sock(0));
    assert_reachable(&a, host_l.local_addr(), "sandbox -> its host address");
}

#[test]
fn outside_client_reaches_host_ports_on_its_link() {
    let client = OutsideClient::new();
    assert!(client.host_ifindex() > 0);
    assert!(client.host_ifname().starts_with(HOST_IF_PREFIX));
    let public = spawn_http_ok_at(Place::Host, client.host_sock(0), "edge");
    let mut s = assert_reachable(&client, public.local_addr(), "client -> host public port");
    assert_eq!(s.local_addr().expect("local").ip(), client.client_addr());
    assert!(http_get(&mut s, "edge", "/").ends_with("edge"));
    // A closed host port answers RST (the XDP guard will turn this into a drop).
    let closed = client.host_sock(public.port().wrapping_add(1).max(1));
    assert_refused(&client, closed, "closed host port without the edge guard");

    // An outside client reaches sandboxes through the host as well (no BPF yet).
    let sb = Sandbox::new();
    let _l = spawn_tcp_echo(&sb, sb.sock(3000));
    assert_reachable(&client, sb.sock(3000), "client -> sandbox through the host");
}

#[test]
fn unreachable_means_silently_dropped() {
    let sb = Sandbox::new();
    let app = spawn_tcp_echo(&sb, sb.sock(3000));
    // Take the sandbox end down: the host's SYN (first its ARP request) goes nowhere, no answer.
    sb.ns.ip(&["link", "set", sb.link.sandbox_ifname(), "down"]).expect("link down");
    assert_unreachable(Origin::host(), sb.sock(3000), "sandbox with its link down");
    assert!(matches!(probe(Origin::host(), sb.sock(3000), DROP_TIMEOUT), Reach::TimedOut));
    let e = try_connect(sb.sock(3000), DROP_TIMEOUT, None).expect_err("must time out");
    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    assert_eq!(app.accepted(), 0);

    // And the assertion fails, with a useful message, when the port is in fact reachable.
    let sb2 = Sandbox::new();
    let _l = spawn_tcp_echo(&sb2, sb2.sock(3000));
    let err = panic::catch_unwind(|| assert_unreachable(Origin::host_marked(MARK), sb2.sock(3000), "should be closed"))
        .expect_err("assert_unreachable must panic on an open port");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("should be closed"), "{msg}");
    assert!(msg.contains("host namespace (SO_MARK 0x6777)"), "{msg}");
    assert!(msg.contains(&sb2.sock(3000).to_string()), "{msg}");
    assert!(msg.contains("ESTABLISHED"), "{msg}");

    let err = panic::catch_unwind(|| {
        assert_reachable(&sb2, sb2.sock(3999), "nothing there");
    })
    .expect_err("assert_reachable must panic on a closed port");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains(sb2.ns.name()) && msg.contains("REACHABLE"), "{msg}");
    assert!(msg.contains("refused"), "{msg}");
}

#[test]
fn netns_run_exec_and_panics() {
    let ns = Netns::new();
    // Inside: only loopback (up), and its own routing table.
    let links = ns.exec(&["ip", "-o", "link", "show"]).expect("exec");
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    let outside = 41;
    assert_eq!(ns.run(|| outside + 1), 42);
    let listener = ns.run(|| std::net::TcpListener::bind("127.0.0.1:0")).expect("bind");
    // The socket belongs to the namespace: unreachable from the host's loopback.
    let port = listener.local_addr().expect("addr").port();
    let from_host = try_connect(SocketAddr::from(([127, 0, 0, 1], port)), DROP_TIMEOUT, None);
    assert!(from_host.is_err(), "namespace socket visible from the host: {from_host:?}");
    assert!(try_connect_from(&ns, SocketAddr::from(([127, 0, 0, 1], port)), REACH_TIMEOUT).is_ok());

    let r = panic::catch_unwind(AssertUnwindSafe(|| ns.run(|| panic!("boom inside"))));
    let payload = r.expect_err("panic must propagate");
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom inside"));
    ns.sysctl("net.ipv4.ip_forward", "1").expect("sysctl");
    assert_eq!(ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]).expect("cat").trim(), "1");
    assert!(ns.exec(&["false"]).is_err());
    let h = ns.spawn(|| std::fs::read_link("/proc/thread-self/ns/net").expect("readlink"));
    let inside = h.join().expect("join");
    let host = std::fs::read_link("/proc/thread-self/ns/net").expect("readlink");
    assert_ne!(inside, host);
}

struct Names {
    netns: String,
    host_if: String,
    sandbox_if: String,
    claim: PathBuf,
    pins: PathBuf,
}

fn assert_gone(n: &Names) {
    assert!(!netns_listed(&n.netns), "netns {} still listed:\n{}", n.netns, ip_netns_list());
    let links = ip_link_names();
    assert!(!links.contains(&n.host_if), "{} still in `ip link`", n.host_if);
    assert!(!links.contains(&n.sandbox_if), "{} still in `ip link`", n.sandbox_if);
    assert!(!n.claim.exists(), "claim {} still there", n.claim.display());
    assert!(!n.pins.exists(), "{} still there", n.pins.display());
}

fn build_everything() -> (Sandbox, BpffsDir, Listener, Names) {
    let sb = Sandbox::new();
    let pins = BpffsDir::new();
    let l = spawn_tcp_echo(&sb, sb.sock(3000));
    assert!(netns_listed(sb.ns.name()));
    assert!(ip_link_names().contains(sb.link.host_ifname()));
    assert!(pins.path().is_dir());
    assert!(bpffs_mounted_at(BPFFS_ROOT).expect("mounts"));
    std::fs::write(pins.path().join("not-a-pin"), b"x").ok(); // bpffs refuses regular files
    std::fs::create_dir(pins.path().join("sub")).expect("mkdir in bpffs");
    let names = Names {
        netns: sb.ns.name().to_owned(),
        host_if: sb.link.host_ifname().to_owned(),
        sandbox_if: sb.link.sandbox_ifname().to_owned(),
        claim: Path::new(STATE_DIR).join("addr").join(sb.link.block().to_string()),
        pins: pins.path().to_owned(),
    };
    assert!(names.claim.exists());
    (sb, pins, l, names)
}

#[test]
fn everything_is_gone_after_drop() {
    let (sb, pins, l, names) = build_everything();
    assert_reachable(Origin::host(), sb.sock(3000), "before drop");
    drop(l);
    drop(pins);
    drop(sb);
    assert_gone(&names);
}

#[test]
fn everything_is_gone_after_a_panic() {
    require_root();
    let mut names = None;
    let r = panic::catch_unwind(AssertUnwindSafe(|| {
        let (_sb, _pins, _l, n) = build_everything();
        names = Some(n);
        panic!("test failure in the middle");
    }));
    assert!(r.is_err());
    assert_gone(&names.expect("names recorded before the panic"));
}

#[test]
fn parallel_creation_gives_unique_names() {
    require_root();
    let built: Vec<(Sandbox, Listener)> = thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                s.spawn(move || {
                    let sb = Sandbox::new();
                    let l = spawn_tcp_echo(&sb, sb.sock(5000 + i));
                    (sb, l)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    let mut seen = HashSet::new();
    for (sb, _) in &built {
        for name in [
            sb.ns.name().to_owned(),
            sb.link.host_ifname().to_owned(),
            sb.link.sandbox_ifname().to_owned(),
            sb.addr().to_string(),
            sb.link.host_addr().to_string(),
        ] {
            assert!(seen.insert(name.clone()), "duplicate {name}");
        }
        assert!(sb.link.host_ifname().len() <= 15 && sb.link.sandbox_ifname().len() <= 15);
        let [a, b, ..] = sb.addr().octets();
        assert!(a == 198 && (b == 18 || b == 19), "{} outside 198.18.0.0/15", sb.addr());
        assert!(sb.addr() > std::net::Ipv4Addr::new(198, 18, 0, 255), "in the reserved /24");
    }
    // All reachable at once, from the host and from each other.
    thread::scope(|s| {
        for (i, (sb, l)) in built.iter().enumerate() {
            let next = &built[(i + 1) % built.len()].0;
            s.spawn(move || {
                let mut c = assert_reachable(Origin::host(), sb.sock(l.port()), "parallel host");
                assert_eq!(read_greeting(&mut c).expect("greet"), format!("port {}", l.port()));
                assert_reachable(&next.ns, sb.sock(l.port()), "parallel neighbour");
            });
        }
    });
}

#[test]
fn sweep_removes_only_leftovers_of_dead_processes() {
    require_root();
    // A pid that certainly belonged to a process that is gone.
    let mut child = Command::new("true").spawn().expect("spawn true");
    let dead = child.id();
    child.wait().expect("wait");

    let stale_ns = format!("{NETNS_PREFIX}{dead}-0");
    let status = Command::new("ip").args(["netns", "add", &stale_ns]).status().expect("ip");
    assert!(status.success());
    // Blocks below 64 are never allocated, so this name cannot belong to a live test.
    let stale_if = format!("{HOST_IF_PREFIX}7");
    let status = Command::new("ip")
        .args(["link", "add", &stale_if, "type", "veth", "peer", "name", &format!("{SANDBOX_IF_PREFIX}7")])
        .status()
        .expect("ip");
    assert!(status.success());
    ensure_bpffs().expect("bpffs");
    let stale_dir = Path::new(BPFFS_ROOT).join(format!("{BPFFS_PREFIX}{dead}-0"));
    std::fs::create_dir_all(&stale_dir).expect("mkdir");

    let live = Sandbox::new();
    let live_pins = BpffsDir::new();

    let report = sweep_stale();
    assert!(report.netns.contains(&stale_ns), "{report:?}");
    assert!(report.links.contains(&stale_if) || report.links.contains(&format!("{SANDBOX_IF_PREFIX}7")), "{report:?}");
    assert!(report.bpffs_dirs.contains(&stale_dir), "{report:?}");
    assert!(!netns_listed(&stale_ns));
    assert!(!ip_link_names().contains(&stale_if));
    assert!(!stale_dir.exists());

    // Live resources (ours, and those of tests running in parallel) are untouched.
    assert!(netns_listed(live.ns.name()));
    assert!(ip_link_names().contains(live.link.host_ifname()));
    assert!(live_pins.path().is_dir());
    let _l = spawn_tcp_echo(&live, live.sock(3000));
    assert_reachable(Origin::host(), live.sock(3000), "live sandbox after a sweep");
}
