//! Public TCP ports ("L4 exposure") in the kernel, driven through `gateway::dataplane::Dataplane`
//! in network namespaces the tests create (never the host's: an sk_lookup program attached there
//! would steer the host's real traffic):
//!
//! - `l4_steer` (sk_lookup): one listening socket receives the connections to every exposed port
//!   of the range on the steered address, and nothing else; unexposing stops it; the pinned link
//!   is reused by the next process; with the listener closed nothing is steered.
//! - `edge_guard` (XDP): the allow-list of each port, changed between two SYNs, and the
//!   per-source rate limit, counted per port and per reason.
//! - What an allowed L4 SYN costs in `edge_guard` (`BPF_PROG_TEST_RUN`, `--nocapture` prints it).

use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd, OwnedFd},
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use gateway::dataplane::{Dataplane, DataplaneSettings, XdpModeSetting, bpffs::PinDir, load_object, maps::KernelMaps};
use gateway_common::{
    counters::{Hook, Reason},
    names,
    policy::{EdgeConfig, L4PortStats},
    verdict_cases::syn_from,
};
use gateway_tests::harness::*;
use ipnet::Ipv4Net;
use nix::{
    errno::Errno,
    sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket},
};

/// The L4 range of these tests.
const RANGE: std::ops::RangeInclusive<u16> = 20000..=20009;

fn settings(pins: &BpffsDir, public_interface: Option<&str>) -> DataplaneSettings {
    DataplaneSettings {
        enabled: true,
        mark: GATEWAY_MARK,
        bpffs: pins.path().to_path_buf(),
        public_interface: public_interface.map(str::to_owned),
        xdp_mode: XdpModeSetting::Skb,
        protected: vec![],
        public_ports: vec![],
        host_allow: vec![],
    }
}

fn net(s: &str) -> Ipv4Net {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

/// The inode of the calling thread's network namespace.
fn netns_ino() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").expect("netns").ino()
}

/// A non-blocking TCP socket of the calling thread's namespace, bound to `src` (any port) when
/// given, connecting to `dst` (the SYN is sent before this returns).
fn start_connect(src: Option<Ipv4Addr>, dst: SocketAddr) -> io::Result<OwnedFd> {
    let fd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    if let Some(src) = src {
        bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(src, 0)))?;
    }
    let SocketAddr::V4(dst) = dst else { return Err(io::Error::other("IPv4 only")) };
    match connect(fd.as_raw_fd(), &SockaddrIn::from(dst)) {
        Ok(()) | Err(Errno::EINPROGRESS) => Ok(fd),
        Err(e) => Err(e.into()),
    }
}

/// Waits up to `timeout` for the handshake of a socket from [`start_connect`].
fn finish_connect(fd: OwnedFd, timeout: Duration) -> io::Result<TcpStream> {
    wait_connected(&fd, timeout)?;
    Ok(TcpStream::from(fd))
}

/// Connects from `src` (or the route's source) to `dst` in the calling thread's namespace.
fn connect_src(src: Option<Ipv4Addr>, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    finish_connect(start_connect(src, dst)?, timeout)
}

/// What became of a connection attempt: connected, reset (refused) or dropped (timed out).
fn outcome(r: io::Result<TcpStream>) -> &'static str {
    match r {
        Ok(_) => "connected",
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => "refused",
        Err(e) if e.kind() == io::ErrorKind::TimedOut => "dropped",
        Err(_) => "failed",
    }
}

/// Accepts one connection within `REACH_TIMEOUT`: the local address the client connected to.
fn accept_one(listener: &TcpListener) -> SocketAddr {
    listener.set_nonblocking(true).expect("non-blocking");
    let deadline = Instant::now() + REACH_TIMEOUT;
    loop {
        match listener.accept() {
            Ok((s, _)) => return s.local_addr().expect("local address"),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => panic!("the listener accepted nothing: {e}"),
        }
    }
}

fn stats(dp: &Dataplane, port: u16) -> L4PortStats {
    dp.l4_port_stats()
        .expect("L4 stats")
        .into_iter()
        .find(|(p, _)| *p == port)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("port {port} is not exposed"))
}

fn verdicts(dp: &Dataplane, reason: Reason) -> u64 {
    dp.verdict_counters()
        .expect("verdict counters")
        .into_iter()
        .find(|(h, r, _)| *h == Hook::Edge && *r == reason)
        .map_or(0, |(_, _, n)| n)
}

#[test]
fn sk_lookup_steers_exposed_ports_of_the_range_to_one_listener() {
    let pins = BpffsDir::new();
    let ns = Netns::new();
    let steered = Ipv4Addr::new(198, 18, 0, 200);
    ns.ip(&["addr", "add", &format!("{steered}/32"), "dev", "lo"]).expect("address on lo");
    let host_ino = netns_ino();
    // Everything runs on a thread inside `ns`: `steer_l4` attaches to the calling thread's
    // namespace, and the connections are made and received there.
    ns.run(|| {
        assert_ne!(netns_ino(), host_ino, "inside the test's namespace");
        let listener = TcpListener::bind((steered, 7000)).expect("the L4 listener");
        let dp = Dataplane::open(&settings(&pins, None)).expect("open the data plane");
        let to = |port: u16| SocketAddr::from((steered, port));
        let try_to = |addr: SocketAddr| outcome(connect_src(None, addr, REACH_TIMEOUT));

        dp.steer_l4(listener.as_fd(), steered, RANGE).expect("steer");
        let pin = pins.path().join(format!("links/sk_lookup-{}", netns_ino()));
        assert!(pin.exists(), "the link is pinned per namespace: {}", pin.display());
        assert_eq!(try_to(to(20001)), "refused", "not exposed yet: the normal lookup resets");

        dp.expose_l4_port(20001, &[net("0.0.0.0/0")]).expect("expose 20001");
        dp.expose_l4_port(20010, &[net("0.0.0.0/0")]).expect("expose 20010, outside the range");
        assert_eq!(try_to(to(20001)), "connected", "an exposed port of the range");
        assert_eq!(accept_one(&listener), to(20001), "the listener got it, addressed to the exposed port");
        assert_eq!(try_to(to(20002)), "refused", "a port of the range that is not exposed");
        assert_eq!(try_to(to(20010)), "refused", "an exposed port outside the range");
        assert_eq!(try_to(SocketAddr::from(([127, 0, 0, 1], 20001))), "refused", "another local address");
        assert_eq!(try_to(to(7000)), "connected", "the listener's own port, by the normal lookup");
        let _ = accept_one(&listener);

        // Steering reaches the whole range, and the address 0.0.0.0 means every local address.
        dp.expose_l4_port(20009, &[]).expect("expose 20009");
        assert_eq!(try_to(to(20009)), "connected", "the last port of the range");
        assert_eq!(accept_one(&listener), to(20009));
        dp.steer_l4(listener.as_fd(), Ipv4Addr::UNSPECIFIED, RANGE).expect("steer any address");
        assert_eq!(try_to(SocketAddr::from(([127, 0, 0, 1], 20001))), "connected", "0.0.0.0: any address");
        assert_eq!(accept_one(&listener), SocketAddr::from(([127, 0, 0, 1], 20001)));

        dp.unexpose_l4_port(20001).expect("unexpose");
        assert_eq!(try_to(to(20001)), "refused", "no longer steered after unexposing");
        assert_eq!(try_to(to(20009)), "connected", "the other port still is");
        let _ = accept_one(&listener);

        // A new process reuses the pinned link (its program swapped in) and the maps: steering
        // never stops, and no second link appears.
        drop(dp);
        assert_eq!(try_to(to(20009)), "connected", "steered with no gateway process");
        let _ = accept_one(&listener);
        let dp = Dataplane::open(&settings(&pins, None)).expect("reopen");
        dp.steer_l4(listener.as_fd(), steered, RANGE).expect("steer again");
        dp.reconcile_l4(&[(20009, vec![net("0.0.0.0/0")]), (20003, vec![])]).expect("reconcile");
        assert_eq!(try_to(to(20009)), "connected", "kept by reconcile");
        let _ = accept_one(&listener);
        assert_eq!(try_to(to(20003)), "connected", "added by reconcile");
        let _ = accept_one(&listener);
        assert_eq!(try_to(to(20010)), "refused");
        let exposed: Vec<u16> = dp.l4_port_stats().expect("stats").into_iter().map(|(p, _)| p).collect();
        assert_eq!(exposed, vec![20003, 20009], "reconcile removed 20010");
        let status = gateway::dataplane::status(pins.path()).expect("status");
        let links: Vec<&serde_json::Value> = status["links"].as_array().expect("links").iter().collect();
        assert_eq!(links.len(), 1, "one sk_lookup link, reused: {status:#}");
        assert_eq!(links[0]["netns"], serde_json::json!(netns_ino()), "{status:#}");
        let dump = gateway::dataplane::dump(pins.path()).expect("dump");
        assert_eq!(dump["edge"]["l4Ports"], "20000-20009", "{dump:#}");
        assert_eq!(dump["edge"]["l4Listener"], true, "{dump:#}");

        // The listener closed (the gateway gone): the kernel empties the slot, nothing is
        // steered any more, and the normal lookup resets.
        drop(listener);
        assert_eq!(try_to(to(20009)), "refused", "no listener: not steered");
        drop(dp);
    });
    assert!(
        !std::fs::read_dir(pins.path().join("links"))
            .expect("links")
            .flatten()
            .any(|e| e.file_name().to_string_lossy() == format!("sk_lookup-{host_ino}")),
        "nothing was attached to the host's namespace"
    );
}

/// A "gateway host" namespace with its public interface (where the edge guard runs) linked to
/// a client namespace that has a second address, and the data plane opened on a thread of the
/// host namespace.
struct EdgeLab {
    /// The client's second address (the link's address is the first).
    second: Ipv4Addr,
    dp: Dataplane,
    listener: TcpListener,
    client: Sandbox,
    _gw: Netns,
    pins: BpffsDir,
}

impl EdgeLab {
    fn new() -> EdgeLab {
        let pins = BpffsDir::new();
        let gw = Netns::new();
        let client = Sandbox::new_in(&gw);
        // Inside these two namespaces only: no other test sees this address.
        let second = Ipv4Addr::new(198, 18, 0, 99);
        client.ns.ip(&["addr", "add", &format!("{second}/32"), "dev", client.link.sandbox_ifname()]).expect("address");
        gw.ip(&["route", "add", &format!("{second}/32"), "dev", client.link.host_ifname()]).expect("route back");
        let public = client.link.host_ifname().to_owned();
        let gw_addr = client.link.host_addr();
        let (dp, listener) = gw.run(|| {
            let listener = TcpListener::bind((gw_addr, 7000)).expect("the L4 listener");
            let dp = Dataplane::open(&settings(&pins, Some(&public))).expect("open with the edge guard");
            dp.steer_l4(listener.as_fd(), gw_addr, RANGE).expect("steer");
            (dp, listener)
        });
        EdgeLab { second, dp, listener, client, _gw: gw, pins }
    }

    fn to(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.client.link.host_addr(), port))
    }

    /// A connection from the client's `src` (None: its link address) to the gateway's `port`.
    fn connect(&self, src: Option<Ipv4Addr>, port: u16, timeout: Duration) -> &'static str {
        let to = self.to(port);
        self.client.ns.run(|| outcome(connect_src(src, to, timeout)))
    }
}

#[test]
fn the_edge_guard_applies_each_ports_allow_list() {
    let lab = EdgeLab::new();
    let first = lab.client.addr();
    let second = lab.second;
    lab.dp.expose_l4_port(20001, &[Ipv4Net::from(first)]).expect("expose to the first address");

    assert_eq!(lab.connect(None, 20001, REACH_TIMEOUT), "connected", "an allowed source");
    assert_eq!(accept_one(&lab.listener).port(), 20001);
    assert_eq!(lab.connect(Some(second), 20001, DROP_TIMEOUT), "dropped", "a source outside the allow-list");
    let s = stats(&lab.dp, 20001);
    assert_eq!((s.syn_pass, s.drop_not_allowed), (1, 1), "counted on the port: {s:?}");
    assert!(verdicts(&lab.dp, Reason::DropEdgeNotAllowed) >= 1);
    assert!(verdicts(&lab.dp, Reason::PassEdgeL4) >= 1);

    // The next SYN sees the new list: the second address in, the first out.
    lab.dp.expose_l4_port(20001, &[Ipv4Net::from(second)]).expect("change the allow-list");
    assert_eq!(lab.connect(Some(second), 20001, REACH_TIMEOUT), "connected", "newly allowed");
    let _ = accept_one(&lab.listener);
    assert_eq!(lab.connect(None, 20001, DROP_TIMEOUT), "dropped", "no longer allowed");
    let s = stats(&lab.dp, 20001);
    assert_eq!((s.syn_pass, s.drop_not_allowed), (2, 2), "the counters survive the change: {s:?}");

    // A prefix covering both; then the port closed: the edge guard drops its SYNs as closed.
    lab.dp.expose_l4_port(20001, &[net("198.18.0.0/15")]).expect("a /15");
    assert_eq!(lab.connect(None, 20001, REACH_TIMEOUT), "connected");
    let _ = accept_one(&lab.listener);
    assert_eq!(lab.connect(Some(second), 20001, REACH_TIMEOUT), "connected");
    let _ = accept_one(&lab.listener);
    let closed_before = verdicts(&lab.dp, Reason::DropEdgeClosedPort);
    lab.dp.unexpose_l4_port(20001).expect("unexpose");
    assert_eq!(lab.connect(None, 20001, DROP_TIMEOUT), "dropped", "unexposed: closed at the edge");
    assert!(verdicts(&lab.dp, Reason::DropEdgeClosedPort) > closed_before);
    assert!(lab.dp.l4_port_stats().expect("stats").is_empty(), "no entry once unexposed");
    let dump = gateway::dataplane::dump(lab.pins.path()).expect("dump");
    assert_eq!(dump["l4Ports"], serde_json::json!([]), "no prefix left: {dump:#}");
}

#[test]
fn the_edge_guard_limits_new_connections_per_source() {
    let lab = EdgeLab::new();
    let (rate, burst) = (5u32, 5u32);
    lab.dp.set_edge_limits(rate, burst).expect("limits");
    lab.dp.expose_l4_port(20002, &[net("0.0.0.0/0")]).expect("expose");
    let rate_before = verdicts(&lab.dp, Reason::DropEdgeRate);

    // 50 SYNs from the first address at once, counted before the first retransmission (1 s).
    let to = lab.to(20002);
    let started = Instant::now();
    let connected = lab.client.ns.run(|| {
        let fds: Vec<OwnedFd> = (0..50).map(|_| start_connect(None, to).expect("connect")).collect();
        let sent = started.elapsed();
        std::thread::sleep(Duration::from_millis(400).saturating_sub(sent));
        fds.into_iter().filter_map(|fd| finish_connect(fd, Duration::from_millis(1)).ok()).count()
    });
    let elapsed = started.elapsed().as_secs_f64();
    let most = burst as usize + (f64::from(rate) * elapsed).ceil() as usize;
    println!("rate {rate}/s, burst {burst}: {connected} of 50 SYNs connected within {elapsed:.2} s (at most {most})");
    assert!(connected >= burst as usize, "the burst passes: {connected}");
    assert!(connected <= most, "at most burst + rate × elapsed: {connected} > {most}");
    let dropped = verdicts(&lab.dp, Reason::DropEdgeRate) - rate_before;
    assert!(dropped >= (50 - connected) as u64, "counted as drop_edge_rate: {dropped}");
    let s = stats(&lab.dp, 20002);
    assert_eq!(s.drop_rate, dropped, "and on the port: {s:?}");
    assert_eq!(s.syn_pass, connected as u64, "{s:?}");

    // Another source has its own bucket.
    assert_eq!(lab.connect(Some(lab.second), 20002, REACH_TIMEOUT), "connected", "a second source");
    // No limit: the first source connects at once again.
    lab.dp.set_edge_limits(0, 0).expect("no limit");
    assert_eq!(lab.connect(None, 20002, REACH_TIMEOUT), "connected", "rate 0 is no limit");
}

/// Median ns/packet of `prog` on `pkt` over `rounds` runs of `repeat`.
fn ns_per_packet(ebpf: &mut aya::Ebpf, prog: &str, pkt: &[u8], rounds: usize, repeat: u32) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let mut out = vec![0u8; pkt.len() + 256];
            let opts = TestRunOptions { data_in: Some(pkt), data_out: Some(&mut out), repeat, ..Default::default() };
            let p: &mut Xdp = ebpf.program_mut(prog).expect("program").try_into().expect("xdp");
            p.test_run(opts).expect("test run").duration.as_nanos() as f64
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

#[test]
fn the_cost_of_an_allowed_l4_syn_in_the_edge_guard() {
    let pins = BpffsDir::new();
    let pin_dir = PinDir::new(pins.path());
    let mut ebpf = load_object(&pin_dir, 3).expect("load");
    let noop: &mut Xdp = ebpf.program_mut(names::PROG_BENCH_NOOP_XDP).expect("noop").try_into().expect("xdp");
    noop.load().expect("load noop");
    let mut maps = KernelMaps::open(&pin_dir.maps()).expect("maps");
    maps.public.insert(gateway_common::policy::PortKey::new(443, gateway_common::IPPROTO_TCP), 1, 0).expect("public");
    let zero = aya::maps::PerCpuValues::try_from(vec![L4PortStats::default(); gateway::dataplane::maps::nr_cpus()])
        .expect("values");
    maps.l4_ports.insert(gateway::dataplane::maps::l4_port_key(20001), zero, 0).expect("port");
    for n in ["198.18.4.0/24", "203.0.113.0/24", "10.0.0.0/8", "192.0.2.7/32"] {
        maps.l4_allow_insert(20001, net(n)).expect("prefix");
    }
    let client = [198, 18, 4, 7];
    let (rounds, repeat) = (9, 200_000);
    let mut figures = Vec::new();
    let paths: [(&str, &str, Vec<u8>, EdgeConfig); 6] = [
        ("trivial XDP program", names::PROG_BENCH_NOOP_XDP, syn_from(client, 20001), EdgeConfig::default()),
        ("edge_guard: public port SYN", names::PROG_EDGE_GUARD, syn_from(client, 443), EdgeConfig::default()),
        ("edge_guard: allowed L4 SYN", names::PROG_EDGE_GUARD, syn_from(client, 20001), EdgeConfig::default()),
        (
            "edge_guard: L4 SYN not allowed",
            names::PROG_EDGE_GUARD,
            syn_from([198, 51, 100, 1], 20001),
            EdgeConfig::default(),
        ),
        (
            "edge_guard: allowed L4 SYN, rate limit on",
            names::PROG_EDGE_GUARD,
            syn_from(client, 20001),
            EdgeConfig { syn_rate: u32::MAX, syn_burst: u32::MAX, ..Default::default() },
        ),
        (
            "edge_guard: SYN over the rate",
            names::PROG_EDGE_GUARD,
            syn_from([198, 18, 4, 8], 20001),
            EdgeConfig { syn_rate: 1, syn_burst: 1, ..Default::default() },
        ),
    ];
    for (name, prog, pkt, cfg) in &paths {
        maps.edge_config.set(0, *cfg, 0).expect("edge config");
        figures.push((name, ns_per_packet(&mut ebpf, prog, pkt, rounds, repeat)));
    }
    let base = figures[0].1;
    println!("BPF_PROG_TEST_RUN, repeat {repeat}, median of {rounds} rounds:");
    for (name, ns) in &figures {
        println!("  {name:<44} {ns:>7.1} ns/packet  ({:.2}× the trivial program, +{:.1} ns)", ns / base, ns - base);
    }
    let allowed = maps.l4_stats().into_iter().find(|(p, _)| *p == 20001).map(|(_, s)| s).expect("stats");
    assert!(allowed.syn_pass >= u64::from(repeat), "the allowed SYNs were counted: {allowed:?}");
    assert!(allowed.drop_rate >= u64::from(repeat) - 1, "the SYNs over the rate were counted: {allowed:?}");
}
