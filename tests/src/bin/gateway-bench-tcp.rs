//! `cargo xtask bench`: the public TCP port comparison (`gateway-bench-tcp`).
//!
//! Topology (every address from the harness's 198.18.0.0/15, every interface made here and
//! removed on drop):
//!
//! - a client namespace on the "public side" ([`OutsideClient`]) with two veth links to the host,
//!   C1 and C2 (default route via C2);
//! - one app namespace ([`Sandbox`]) with three veth links: A1, registered with the "copy"
//!   gateway, A2, registered with the "splice" gateway (tcx enforcement attached on each, only
//!   the gateway's marked SYNs admitted), and B, unregistered (default route), which carries the
//!   direct and HAProxy traffic to the same app processes;
//! - the apps, listening on 0.0.0.0 in that namespace: `iperf3 -s` (5201), an echo server
//!   (7000: echoes until the client's FIN) and a one-shot echo (7001: echoes 64 B, then closes,
//!   for the connection rate), the last two on one tokio worker thread of this process;
//! - on the host: gateway "copy" (`l4.engine = "copy"`, public address and edge guard on C1),
//!   gateway "splice" (`l4.engine = "splice"`, public address and edge guard on C2), and one
//!   HAProxy (`mode tcp`, its default thread count) with a listener per app port twice: plain, and
//!   with `option splice-auto`, bound on C2's host address.
//!
//! Contenders: direct (client → app on link B, no proxy), gateway copy, gateway splice, HAProxy,
//! HAProxy splice-auto. Every path crosses one XDP edge guard (skb mode) on its client link; both
//! gateways' guards let the direct and HAProxy ports through (`extra_public_ports`) and limit
//! SYNs at a rate no load reaches (the default 200/s per source would cap the connection rate
//! of every contender alike). Access logs are off (gateways at `warn`, HAProxy without `log`).
//!
//! Loads, alternated within every round (the contender order rotates by one each round),
//! medians over rounds:
//! - throughput: `iperf3 -c` in the client namespace, 1 stream and 8 streams (`-P 8`), client to
//!   app; Gb/s received, and CPU seconds per GB moved, system-wide (/proc/stat: user + nice +
//!   system + irq + softirq + steal, so softirq and kworkers count), plus, as parts of it, the
//!   proxy's own processes (utime + stime) and other users' processes on a shared machine
//!   ([`others_ticks`]);
//! - echo latency, open loop: message `i` is due at `start + i / rate` on connection `i mod n`
//!   whatever happened to the earlier ones (pipelined on its connection), and its latency runs
//!   from that instant to the last byte of its echo (no coordinated omission); 64 B and 16 KiB
//!   messages on 1 and 50 connections at fixed rates ([`ECHO_LOADS`]), p50 / p99;
//! - connection rate: [`CPS_THREADS`] threads each connect, send 64 B, read the echo and the
//!   app's FIN, close, in a loop for a fixed time; connections/s and CPU per 10k connections. The
//!   app closes first, so TIME_WAIT stays with the app and the proxies never run out of source
//!   ports towards it.
//!
//! Usage: `gateway-bench-tcp [--quick] [--out DIR] [--rounds N] [--seconds S] [--only KEY,…]` (root;
//! GATEWAY_BIN = release gateway; `iperf3` and `haproxy` installed). Writes DIR/tcp.json and
//! DIR/tcp.md.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    fs,
    io::{self, Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use gateway_tests::{
    attack::raise_nofile,
    benchkit::{Proc, clock_ticks, cpu_ticks, run_ok},
    edge::WS,
    gateway_process::{GatewayProcess, TempDir, temp_dir},
    harness::{BpffsDir, Netns, OutsideClient, Sandbox, SandboxLink, require_root},
};
use serde_json::{Value, json};

/// The apps' ports in their namespace.
const IPERF_PORT: u16 = 5201;
const ECHO_PORT: u16 = 7000;
const ONCE_PORT: u16 = 7001;
/// The bytes of one connection of the connection-rate load, each way.
const ONCE_BYTES: usize = 64;
/// HAProxy's listeners on the host: iperf3, echo, one-shot echo; plain, then splice-auto.
const HAPROXY_PORTS: [u16; 3] = [22001, 22002, 22003];
const HAPROXY_SPLICE_PORTS: [u16; 3] = [22011, 22012, 22013];
/// The public port ranges of the two gateways (disjoint: each gateway's sk_lookup program
/// steers its own address and ports).
const COPY_RANGE: &str = "21100-21149";
const SPLICE_RANGE: &str = "21150-21199";
/// Threads of the connection-rate client.
const CPS_THREADS: usize = 8;
/// The echo loads: message size, connections, messages per second in total. Fixed rates well
/// below what every contender sustains on a small machine, so p50 / p99 are latencies rather
/// than queues.
const ECHO_LOADS: [(usize, usize, f64); 4] =
    [(64, 1, 2000.0), (64, 50, 10_000.0), (16384, 1, 1000.0), (16384, 50, 2500.0)];

/// Contender order; the ratio columns look them up by index.
const DIRECT: usize = 0;
const GW_COPY: usize = 1;
const GW_SPLICE: usize = 2;
const HAPROXY: usize = 3;
const HAPROXY_SPLICE: usize = 4;

/// Busy CPU time of the whole machine so far, seconds: user + nice + system + irq + softirq +
/// steal of /proc/stat's `cpu` line (guest time is inside user already).
fn system_cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat.lines().find(|l| l.starts_with("cpu ")).expect("the cpu line of /proc/stat");
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
    let busy: u64 = [0, 1, 2, 5, 6, 7].iter().map(|i| f.get(*i).copied().unwrap_or(0)).sum();
    busy as f64 / clock_ticks()
}

/// utime + stime of these processes (all their threads), seconds.
fn process_cpu_seconds(pids: &[u32]) -> f64 {
    pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>() as f64 / clock_ticks()
}

/// CPU ticks (utime + stime) of every process outside this bench's tree (this process and its
/// descendants) and outside the kernel's threads: other users of a shared machine. A process
/// that ends during a measurement loses its last part (an underestimate); `cutime` is left out
/// because it lands all at once when a parent reaps a child that may have run for minutes.
fn others_ticks() -> HashMap<u32, u64> {
    const PF_KTHREAD: u64 = 0x0020_0000;
    struct P {
        pid: u32,
        ppid: u32,
        flags: u64,
        ticks: u64,
    }
    let procs: Vec<P> = fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let f: Vec<u64> =
                s[s.rfind(')')? + 2..].split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
            // After the state: ppid (4), …, flags (9), …, utime (14), stime (15).
            let field = |n: usize| f.get(n - 4).copied().unwrap_or(0);
            Some(P { pid, ppid: field(4) as u32, flags: field(9), ticks: field(14) + field(15) })
        })
        .collect();
    let mut ours = HashSet::from([std::process::id()]);
    loop {
        let before = ours.len();
        for p in &procs {
            if ours.contains(&p.ppid) {
                ours.insert(p.pid);
            }
        }
        if ours.len() == before {
            break;
        }
    }
    procs
        .into_iter()
        .filter(|p| !ours.contains(&p.pid) && p.flags & PF_KTHREAD == 0 && p.pid != 2)
        .map(|p| (p.pid, p.ticks))
        .collect()
}

/// CPU counters at the start of a measurement.
struct CpuMark {
    system: f64,
    process: f64,
    others: HashMap<u32, u64>,
}

/// CPU seconds over a measurement: the whole machine, the proxy's processes, and other users'
/// processes (part of the whole machine's).
#[derive(Clone, Copy)]
struct CpuUsed {
    system: f64,
    proxy: f64,
    others: f64,
}

impl CpuMark {
    fn now(pids: &[u32]) -> CpuMark {
        CpuMark { others: others_ticks(), system: system_cpu_seconds(), process: process_cpu_seconds(pids) }
    }
    fn since(&self, pids: &[u32]) -> CpuUsed {
        let (system, proxy) = (system_cpu_seconds() - self.system, process_cpu_seconds(pids) - self.process);
        let others: u64 = others_ticks()
            .into_iter()
            .map(|(pid, t)| t.saturating_sub(self.others.get(&pid).copied().unwrap_or(0)))
            .sum();
        CpuUsed { system, proxy, others: others as f64 / clock_ticks() }
    }
}

/// A listening socket on 0.0.0.0:`port` inside `ns` (backlog 4096, like the proxies').
fn listen_in(ns: &Netns, port: u16) -> TcpListener {
    ns.run(|| -> io::Result<TcpListener> {
        use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, setsockopt, socket, sockopt};
        let fd: OwnedFd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        setsockopt(&fd, sockopt::ReuseAddr, &true)?;
        bind(fd.as_raw_fd(), &SockaddrIn::new(0, 0, 0, 0, port))?;
        // nix's Backlog stops at SOMAXCONN as libc declares it (128); the kernel takes 4096.
        // SAFETY: listen(2) on a socket we own.
        if unsafe { libc::listen(fd.as_raw_fd(), 4096) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let l = TcpListener::from(fd);
        l.set_nonblocking(true)?;
        Ok(l)
    })
    .unwrap_or_else(|e| panic!("listen on {port} in {ns}: {e}"))
}

/// The echo apps (7000 and 7001) on one tokio worker thread; stopped when dropped.
struct EchoApps {
    _rt: tokio::runtime::Runtime,
}

impl EchoApps {
    fn start(ns: &Netns) -> EchoApps {
        let (echo, once) = (listen_in(ns, ECHO_PORT), listen_in(ns, ONCE_PORT));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bench-app")
            .enable_io()
            .build()
            .expect("the apps' runtime");
        rt.spawn(serve(echo, false));
        rt.spawn(serve(once, true));
        EchoApps { _rt: rt }
    }
}

async fn serve(listener: TcpListener, once: bool) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("register the app's listener");
    loop {
        let Ok((s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = s.set_nodelay(true);
        tokio::spawn(async move { if once { echo_once(s).await } else { echo(s).await } });
    }
}

/// Echoes until the client's FIN, then closes.
async fn echo(mut s: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Echoes [`ONCE_BYTES`], then closes (the app's FIN comes first).
async fn echo_once(mut s: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; ONCE_BYTES];
    if s.read_exact(&mut buf).await.is_ok() {
        let _ = s.write_all(&buf).await;
    }
}

/// Where a contender is reached from the client namespace.
struct Contender {
    name: &'static str,
    key: &'static str,
    iperf: SocketAddrV4,
    echo: SocketAddrV4,
    once: SocketAddrV4,
    /// Processes whose own CPU counts as "the proxy" (none for direct).
    pids: Vec<u32>,
}

/// Everything set up, torn down in field order: gateways before their pins, processes before
/// the links and namespaces they use, links before their namespaces.
struct Topology {
    gw_copy: GatewayProcess,
    gw_splice: GatewayProcess,
    _pins_copy: BpffsDir,
    _pins_splice: BpffsDir,
    haproxy: Proc,
    _iperf: Proc,
    _apps: EchoApps,
    c2: SandboxLink,
    client: OutsideClient,
    a2: SandboxLink,
    b: SandboxLink,
    sb: Sandbox,
    _tmp: TempDir,
}

/// (iperf3, echo, one-shot) public ports of the sandbox as a gateway answered them.
fn public_ports(answer: &Value) -> [u16; 3] {
    [IPERF_PORT, ECHO_PORT, ONCE_PORT].map(|target| {
        answer["ports"]
            .as_array()
            .and_then(|ports| ports.iter().find(|p| p["target"] == target))
            .and_then(|p| p["public"]["port"].as_u64())
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or_else(|| panic!("no public port for {target}: {answer}"))
    })
}

impl Topology {
    fn new() -> Topology {
        let tmp = temp_dir("gateway-bench-tcp");

        // The app namespace: A1 (copy gateway), A2 (splice gateway), B (unregistered, default).
        let sb = Sandbox::new();
        sb.ns.ip(&["route", "del", "default"]).expect("drop link A1's default route");
        let a2 = SandboxLink::new(&sb.ns);
        sb.ns.ip(&["route", "del", "default"]).expect("drop link A2's default route");
        let b = SandboxLink::new(&sb.ns);

        // The client namespace: C1 (copy gateway's public side), C2 (the others; default).
        let client = OutsideClient::new();
        client.ns.ip(&["route", "del", "default"]).expect("drop link C1's default route");
        let c2 = SandboxLink::new(&client.ns);
        // The connection-rate load opens tens of thousands of connections a round.
        client.ns.sysctl("net.ipv4.ip_local_port_range", "1024 65535").expect("client port range");
        client.ns.sysctl("net.ipv4.tcp_tw_reuse", "1").expect("client tw_reuse");

        let iperf_log = fs::File::create(tmp.path().join("iperf3-server.log")).expect("iperf3 log");
        let iperf = Proc::spawn(
            sb.ns
                .command("iperf3")
                .args(["-s", "-p", &IPERF_PORT.to_string()])
                .stdout(iperf_log.try_clone().expect("clone"))
                .stderr(iperf_log),
            "iperf3 -s",
        );
        let apps = EchoApps::start(&sb.ns);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sb.ns.exec(&["ss", "-Hltn", &format!("sport = :{IPERF_PORT}")]).is_ok_and(|o| !o.trim().is_empty()) {
            assert!(Instant::now() < deadline, "iperf3 -s does not listen in {}", sb.ns);
            std::thread::sleep(Duration::from_millis(20));
        }

        let extra_ports: Vec<String> = [22, IPERF_PORT, ECHO_PORT, ONCE_PORT]
            .into_iter()
            .chain(HAPROXY_PORTS)
            .chain(HAPROXY_SPLICE_PORTS)
            .map(|p| p.to_string())
            .collect();
        let gateway = |pins: &BpffsDir, public: &SandboxLink, engine: &str, range: &str| {
            let l4 = format!(
                "\n[l4]\nport_range = \"{range}\"\naddress = \"{}\"\nengine = \"{engine}\"\n",
                public.host_addr()
            );
            let mut gw = GatewayProcess::enforcing(pins.path(), &l4);
            let keys = format!(
                "xdp_mode = \"skb\"\nsyn_rate = 1000000\nsyn_burst = 1000000\nextra_public_ports = [{}]\n",
                extra_ports.join(", ")
            );
            gw.edit_config(|c| {
                c.replacen("xdp_mode = \"skb\"\n", &keys, 1)
                    .replace("public_interface = \"\"", &format!("public_interface = \"{}\"", public.host_ifname()))
            });
            gw.set_log_filter("warn");
            gw.spawn();
            gw
        };
        let (pins_copy, pins_splice) = (BpffsDir::new(), BpffsDir::new());
        let gw_copy = gateway(&pins_copy, &client.link, "copy", COPY_RANGE);
        let gw_splice = gateway(&pins_splice, &c2, "splice", SPLICE_RANGE);

        let haproxy = haproxy(tmp.path(), c2.host_addr(), b.sandbox_addr());
        Topology {
            gw_copy,
            gw_splice,
            _pins_copy: pins_copy,
            _pins_splice: pins_splice,
            haproxy,
            _iperf: iperf,
            _apps: apps,
            c2,
            client,
            a2,
            b,
            sb,
            _tmp: tmp,
        }
    }

    /// Registers the app namespace with each gateway (on its own link) and returns the
    /// contenders in order.
    fn contenders(&self) -> Vec<Contender> {
        let register = |gw: &GatewayProcess, link: &SandboxLink| -> [u16; 3] {
            let ports: Vec<Value> = [IPERF_PORT, ECHO_PORT, ONCE_PORT]
                .iter()
                .map(|p| json!({"target": p, "protocol": "TCP", "expose": {"allowFrom": ["0.0.0.0/0"]}}))
                .collect();
            let body =
                json!({"address": link.sandbox_addr().to_string(), "interface": link.host_ifname(), "ports": ports});
            let r = gw.client().put_json(&format!("/v1/workspaces/{WS}/sandboxes/app"), &body);
            assert_eq!(r.status, 200, "register the app: {}", r.text());
            public_ports(&r.json())
        };
        let copy = register(&self.gw_copy, &self.sb.link);
        let splice = register(&self.gw_splice, &self.a2);
        let at = |ip: Ipv4Addr, p: [u16; 3]| {
            (SocketAddrV4::new(ip, p[0]), SocketAddrV4::new(ip, p[1]), SocketAddrV4::new(ip, p[2]))
        };
        let contender = |name, key, (iperf, echo, once): (SocketAddrV4, SocketAddrV4, SocketAddrV4), pids| Contender {
            name,
            key,
            iperf,
            echo,
            once,
            pids,
        };
        let hap = self.haproxy.pid();
        vec![
            contender("direct", "direct", at(self.b.sandbox_addr(), [IPERF_PORT, ECHO_PORT, ONCE_PORT]), vec![]),
            contender(
                "gateway copy",
                "gateway_copy",
                at(self.client.host_addr(), copy),
                vec![self.gw_copy.pid().expect("pid")],
            ),
            contender(
                "gateway splice",
                "gateway_splice",
                at(self.c2.host_addr(), splice),
                vec![self.gw_splice.pid().expect("pid")],
            ),
            contender("HAProxy", "haproxy", at(self.c2.host_addr(), HAPROXY_PORTS), vec![hap]),
            contender(
                "HAProxy splice-auto",
                "haproxy_splice_auto",
                at(self.c2.host_addr(), HAPROXY_SPLICE_PORTS),
                vec![hap],
            ),
        ]
    }

    /// One echo of 64 B through each app port of `c` (the one-shot one must also close).
    fn check(&self, c: &Contender) {
        self.client.ns.run(|| {
            let mut s = TcpStream::connect_timeout(&c.echo.into(), Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("{}: connect to {}: {e}", c.name, c.echo));
            s.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
            s.write_all(b"ping").expect("write");
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).unwrap_or_else(|e| panic!("{}: no echo from {}: {e}", c.name, c.echo));
            assert_eq!(&buf, b"ping");
            one_connection(c.once.into()).unwrap_or_else(|e| panic!("{}: one-shot echo at {}: {e}", c.name, c.once));
        });
    }
}

/// HAProxy, `mode tcp`, its default thread count (one per CPU), no logging: a listener per app
/// port, plain and with `option splice-auto`.
fn haproxy(dir: &Path, bind: Ipv4Addr, app: Ipv4Addr) -> Proc {
    let conf = dir.join("haproxy.cfg");
    let mut cfg = String::from(
        "global\n  maxconn 4000\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n",
    );
    let targets = [IPERF_PORT, ECHO_PORT, ONCE_PORT];
    for (ports, splice) in [(HAPROXY_PORTS, false), (HAPROXY_SPLICE_PORTS, true)] {
        for (port, target) in ports.iter().zip(targets) {
            cfg.push_str(&format!(
                "listen l{port}\n  bind {bind}:{port}\n{}  server app {app}:{target}\n",
                if splice { "  option splice-auto\n" } else { "" }
            ));
        }
    }
    fs::write(&conf, cfg).expect("write haproxy.cfg");
    let stderr_path = dir.join("haproxy.stderr");
    let stderr = fs::File::create(&stderr_path).expect("haproxy stderr file");
    let p = Proc::spawn(
        Command::new("haproxy").arg("-f").arg(&conf).arg("-db").stdout(Stdio::null()).stderr(stderr),
        "haproxy",
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in HAPROXY_PORTS.iter().chain(&HAPROXY_SPLICE_PORTS) {
        while TcpStream::connect_timeout(&SocketAddr::from((bind, *port)), Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "haproxy does not listen on {bind}:{port}: {}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    p
}

/// One connection of the connection-rate load: connect, 64 B, the echo, the app's FIN, close.
fn one_connection(addr: SocketAddr) -> io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    let msg = [0x5au8; ONCE_BYTES];
    s.write_all(&msg)?;
    let mut back = [0u8; ONCE_BYTES];
    s.read_exact(&mut back)?;
    let mut rest = [0u8; 16];
    match s.read(&mut rest)? {
        0 if back == msg => Ok(()),
        0 => Err(io::Error::other("the echo differs")),
        _ => Err(io::Error::other("more than the echo")),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Load {
    /// iperf3 with this many parallel streams.
    Throughput(u32),
    /// Index into [`ECHO_LOADS`].
    Echo(usize),
    ConnectionRate,
}

impl Load {
    fn name(self) -> String {
        match self {
            Load::Throughput(1) => "throughput, 1 stream (iperf3)".into(),
            Load::Throughput(n) => format!("throughput, {n} streams (iperf3 -P {n})"),
            Load::Echo(i) => {
                let (size, conns, rate) = ECHO_LOADS[i];
                format!(
                    "echo {}, {conns} connection{}, {} msg/s (open loop)",
                    size_name(size),
                    if conns == 1 { "" } else { "s" },
                    thousands(rate as u64)
                )
            }
            Load::ConnectionRate => {
                format!("connection rate ({CPS_THREADS} threads: connect, {ONCE_BYTES} B, echo, close)")
            }
        }
    }
    fn key(self) -> String {
        match self {
            Load::Throughput(n) => format!("throughput_{n}"),
            Load::Echo(i) => {
                let (size, conns, _) = ECHO_LOADS[i];
                format!("echo_{size}_{conns}")
            }
            Load::ConnectionRate => "connection_rate".into(),
        }
    }
}

fn size_name(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) { format!("{} KiB", size / 1024) } else { format!("{size} B") }
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One measurement. Throughput: `value` Gb/s, `cpu_*` seconds per GB. Echo: `value` answered
/// messages/s, p50/p99 µs. Connection rate: `value` connections/s, `cpu_*` seconds per 10k.
#[derive(Clone, Copy, Default)]
struct Sample {
    value: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_system: f64,
    cpu_proxy: f64,
    /// Of `cpu_system`: other users' processes (see [`others_ticks`]).
    cpu_others: f64,
    /// Other users' processes during the run, in CPUs (CPU seconds per second).
    others_cpus: f64,
    errors: u64,
    /// Throughput: TCP retransmissions counted by iperf3's sender.
    retransmits: u64,
}

/// One run of `load` against `c`, with the CPU other users' processes took meanwhile.
fn run_load(load: Load, top: &Topology, c: &Contender, secs: u64) -> Sample {
    let (mark, t0) = (CpuMark::now(&[]), Instant::now());
    let sample = run_load_inner(load, top, c, secs);
    Sample { others_cpus: mark.since(&[]).others / t0.elapsed().as_secs_f64(), ..sample }
}

fn run_load_inner(load: Load, top: &Topology, c: &Contender, secs: u64) -> Sample {
    match load {
        Load::Throughput(streams) => throughput(top, c, streams, secs),
        Load::Echo(i) => {
            let (size, conns, rate) = ECHO_LOADS[i];
            let o = top.client.ns.run(|| echo_open_loop(c.echo.into(), size, conns, rate, Duration::from_secs(secs)));
            Sample {
                value: o.answered as f64 / secs as f64,
                p50_us: o.p50_us,
                p99_us: o.p99_us,
                errors: o.lost,
                ..Sample::default()
            }
        }
        Load::ConnectionRate => {
            let (done, errors, elapsed, cpu) = connection_rate(&top.client.ns, c.once.into(), &c.pids, secs);
            let per_10k = |s: f64| if done > 0 { s * 10_000.0 / done as f64 } else { f64::NAN };
            Sample {
                value: done as f64 / elapsed,
                cpu_system: per_10k(cpu.system),
                cpu_proxy: per_10k(cpu.proxy),
                cpu_others: per_10k(cpu.others),
                errors,
                ..Sample::default()
            }
        }
    }
}

/// `iperf3 -c` from the client namespace (a busy server, left by an aborted test, is retried).
fn throughput(top: &Topology, c: &Contender, streams: u32, secs: u64) -> Sample {
    for attempt in 0..3 {
        let mut cmd = top.client.ns.command("iperf3");
        cmd.args(["-c", &c.iperf.ip().to_string(), "-p", &c.iperf.port().to_string(), "-J"]).args([
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
        ]);
        let mark = CpuMark::now(&c.pids);
        let out = cmd.output().expect("run iperf3");
        let cpu = mark.since(&c.pids);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let error = v["error"].as_str().map(str::to_owned).or_else(|| {
            (!out.status.success() || v.is_null()).then(|| String::from_utf8_lossy(&out.stderr).into_owned())
        });
        if let Some(e) = error {
            eprintln!("warning: {} iperf3 -P {streams}: {e} (attempt {})", c.name, attempt + 1);
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        let received = &v["end"]["sum_received"];
        let bytes = received["bytes"].as_f64().unwrap_or(0.0);
        let per_gb = |s: f64| if bytes > 0.0 { s / (bytes / 1e9) } else { f64::NAN };
        return Sample {
            value: received["bits_per_second"].as_f64().unwrap_or(0.0) / 1e9,
            cpu_system: per_gb(cpu.system),
            cpu_proxy: per_gb(cpu.proxy),
            cpu_others: per_gb(cpu.others),
            retransmits: v["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0),
            ..Sample::default()
        };
    }
    Sample { value: f64::NAN, cpu_system: f64::NAN, cpu_proxy: f64::NAN, errors: 1, ..Sample::default() }
}

/// [`CPS_THREADS`] threads in `ns` opening connections to `addr` for `secs`: (connections,
/// errors, elapsed seconds, CPU).
fn connection_rate(ns: &Netns, addr: SocketAddr, pids: &[u32], secs: u64) -> (u64, u64, f64, CpuUsed) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(CPS_THREADS + 1));
    let threads: Vec<_> = (0..CPS_THREADS)
        .map(|_| {
            let (stop, done, errors, start) = (stop.clone(), done.clone(), errors.clone(), start.clone());
            ns.spawn(move || {
                start.wait();
                while !stop.load(Ordering::Relaxed) {
                    match one_connection(addr) {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(1));
                            errors.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    start.wait();
    let (t0, mark) = (Instant::now(), CpuMark::now(pids));
    std::thread::sleep(Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a connection-rate thread");
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = mark.since(pids);
    (done.load(Ordering::Relaxed), errors.load(Ordering::Relaxed), elapsed, cpu)
}

struct EchoOutcome {
    answered: u64,
    lost: u64,
    p50_us: f64,
    p99_us: f64,
}

/// One open-loop echo client on the calling thread (which must be in the client namespace):
/// `conns` connections, message `i` of `size` bytes due at `start + i / rate` on connection
/// `i mod conns`, written as soon as it is due (behind what that connection still has to
/// write), its latency from its due instant to the arrival of its echo's last byte.
fn echo_open_loop(addr: SocketAddr, size: usize, connections: usize, rate: f64, duration: Duration) -> EchoOutcome {
    // The wake-ups of ppoll are due at precise instants: no 50 µs timer slack.
    // SAFETY: prctl(PR_SET_TIMERSLACK) on the calling thread, plain integer arguments.
    unsafe {
        libc::prctl(
            libc::PR_SET_TIMERSLACK,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
    struct Conn {
        s: TcpStream,
        alive: bool,
        /// Bytes due but not written yet.
        pending: usize,
        sent: u64,
        received: u64,
        /// (due instant, end offset in the stream) of messages not fully echoed yet.
        waiting: VecDeque<(Instant, u64)>,
    }
    let total = (rate * duration.as_secs_f64()).round() as u64;
    let mut lost = 0u64;
    let mut conns: Vec<Conn> = Vec::new();
    let payload = vec![0x5au8; size];
    for _ in 0..connections {
        // Each connection made and warmed by one echo (the proxies connect upstream on accept).
        let warm = || -> io::Result<TcpStream> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            s.write_all(&payload)?;
            let mut back = vec![0u8; size];
            s.read_exact(&mut back)?;
            s.set_nonblocking(true)?;
            Ok(s)
        };
        match warm() {
            Ok(s) => conns.push(Conn { s, alive: true, pending: 0, sent: 0, received: 0, waiting: VecDeque::new() }),
            Err(e) => eprintln!("warning: echo connection to {addr}: {e}"),
        }
    }
    if conns.is_empty() {
        return EchoOutcome { answered: 0, lost: total, p50_us: f64::NAN, p99_us: f64::NAN };
    }
    let n = conns.len();
    let zeros = vec![0x5au8; 64 * 1024];
    let mut buf = vec![0u8; 256 * 1024];
    let mut lat: Vec<f64> = Vec::with_capacity(total as usize);
    let start = Instant::now() + Duration::from_millis(20);
    let due = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let hard_end = start + duration + Duration::from_secs(2);
    let mut next = 0u64;
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(n);
    let mut which: Vec<usize> = Vec::with_capacity(n);
    loop {
        let now = Instant::now();
        while next < total && due(next) <= now {
            let c = &mut conns[(next % n as u64) as usize];
            if c.alive {
                c.pending += size;
                c.sent += size as u64;
                c.waiting.push_back((due(next), c.sent));
            } else {
                lost += 1;
            }
            next += 1;
        }
        for c in conns.iter_mut().filter(|c| c.alive && c.pending > 0) {
            while c.pending > 0 {
                match c.s.write(&zeros[..c.pending.min(zeros.len())]) {
                    Ok(k) => c.pending -= k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => c.alive = false,
                }
                if !c.alive {
                    break;
                }
            }
        }
        let outstanding = conns.iter().any(|c| c.alive && !c.waiting.is_empty());
        if (next >= total && !outstanding) || now >= hard_end {
            break;
        }
        fds.clear();
        which.clear();
        for (i, c) in conns.iter().enumerate().filter(|(_, c)| c.alive) {
            let events = libc::POLLIN | if c.pending > 0 { libc::POLLOUT } else { 0 };
            fds.push(libc::pollfd { fd: c.s.as_raw_fd(), events, revents: 0 });
            which.push(i);
        }
        if fds.is_empty() {
            break;
        }
        let wake = if next < total { due(next) } else { hard_end };
        let left = wake.saturating_duration_since(Instant::now());
        let ts =
            libc::timespec { tv_sec: left.as_secs() as libc::time_t, tv_nsec: left.subsec_nanos() as libc::c_long };
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd; `ts` lives across the call; no
        // signal mask.
        let ready = unsafe { libc::ppoll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, &ts, std::ptr::null()) };
        if ready <= 0 {
            continue;
        }
        for (fd, i) in fds.iter().zip(&which) {
            if fd.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) == 0 {
                continue;
            }
            let c = &mut conns[*i];
            loop {
                match c.s.read(&mut buf) {
                    Ok(0) => {
                        c.alive = false;
                        break;
                    }
                    Ok(k) => {
                        let t = Instant::now();
                        c.received += k as u64;
                        while c.waiting.front().is_some_and(|(_, end)| *end <= c.received) {
                            let (d, _) = c.waiting.pop_front().expect("front");
                            lat.push(t.duration_since(d).as_secs_f64() * 1e6);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => {
                        c.alive = false;
                        break;
                    }
                }
            }
        }
    }
    lost += conns.iter().map(|c| c.waiting.len() as u64).sum::<u64>() + (total - next);
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| if lat.is_empty() { f64::NAN } else { lat[((lat.len() - 1) as f64 * p).round() as usize] };
    EchoOutcome { answered: lat.len() as u64, lost, p50_us: pct(0.5), p99_us: pct(0.99) }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn main() {
    require_root();
    let args: Vec<String> = std::env::args().collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let quick = flag("--quick");
    let out_dir = value("--out").map_or_else(|| PathBuf::from("target/bench"), PathBuf::from);
    // Quick: 3 rounds × 7 loads × 5 contenders × 1 s ≈ 2.5 min with the set-up; full: 5 rounds
    // × 3 s ≈ 10 min.
    let (mut rounds, mut secs) = if quick { (3, 1) } else { (5, 3) };
    if let Some(r) = value("--rounds") {
        rounds = r.parse().expect("--rounds N");
    }
    if let Some(s) = value("--seconds") {
        secs = s.parse().expect("--seconds S");
    }
    // A subset of the loads while working on one (the report then holds only those).
    let only: Option<Vec<String>> = value("--only").map(|v| v.split(',').map(str::to_owned).collect());
    fs::create_dir_all(&out_dir).expect("create the output dir");
    for tool in ["iperf3", "haproxy", "ip", "ss"] {
        assert!(
            Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success()),
            "{tool} is missing (cargo xtask bench installs iperf3 and haproxy)"
        );
    }
    raise_nofile(65_536);
    let started = Instant::now();
    let top = Topology::new();
    let contenders = top.contenders();
    for c in &contenders {
        top.check(c);
    }
    let loads: Vec<Load> = [Load::Throughput(1), Load::Throughput(8)]
        .into_iter()
        .chain((0..ECHO_LOADS.len()).map(Load::Echo))
        .chain([Load::ConnectionRate])
        .filter(|l| only.as_ref().is_none_or(|keys| keys.iter().any(|k| *k == l.key())))
        .collect();
    assert!(
        !loads.is_empty(),
        "--only names no load (keys: throughput_1, throughput_8, echo_SIZE_CONNS, connection_rate)"
    );
    println!(
        "# TCP port benchmark ({}): {rounds} alternated rounds × {secs} s per contender and load",
        if quick { "quick" } else { "full" }
    );
    // samples[load][contender][round]
    let mut samples = vec![vec![Vec::<Sample>::new(); contenders.len()]; loads.len()];
    for round in 0..rounds {
        for (li, load) in loads.iter().enumerate() {
            for k in 0..contenders.len() {
                let ci = (k + round) % contenders.len();
                let c = &contenders[ci];
                let s = run_load(*load, &top, c, secs);
                if s.errors > 0 {
                    eprintln!("warning: {} / {}: {} errors in round {round}", c.name, load.name(), s.errors);
                }
                samples[li][ci].push(s);
                // Closing connections and TIME_WAIT timers settle before the next contender.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        println!("round {}/{rounds} done at {:.0} s", round + 1, started.elapsed().as_secs_f64());
    }
    // What the gateways counted: every connection went through the engine it names.
    let engines: Vec<Value> = [(&top.gw_copy, "copy"), (&top.gw_splice, "splice")]
        .iter()
        .map(|(gw, engine)| {
            let text = gw.anonymous_client().get("/metrics").text();
            let accepted: f64 = text
                .lines()
                .filter(|l| l.starts_with("gateway_l4_connections_total{") && l.contains("result=\"accepted\""))
                .filter(|l| l.contains(&format!("engine=\"{engine}\"")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            json!({"engine": engine, "accepted_connections": accepted})
        })
        .collect();
    let report = report(&loads, &contenders, &samples, rounds, secs, quick);
    println!("\n{}", report.md);
    let versions = json!({
        "haproxy": run_ok(Command::new("haproxy").arg("-v"), "haproxy -v").lines().next().unwrap_or("").trim(),
        "iperf3": run_ok(Command::new("iperf3").arg("--version"), "iperf3 --version").lines().next().unwrap_or("").trim(),
        "kernel": run_ok(Command::new("uname").arg("-r"), "uname -r").trim(),
    });
    let result = json!({
        "mode": if quick { "quick" } else { "full" }, "rounds": rounds, "seconds_per_run": secs,
        "echo_loads": ECHO_LOADS.iter().map(|(size, conns, rate)| json!({"bytes": size, "connections": conns, "rate": rate})).collect::<Vec<_>>(),
        "connection_rate_threads": CPS_THREADS,
        "contender_order": contenders.iter().map(|c| c.name).collect::<Vec<_>>(),
        "loads": report.json, "targets": report.targets, "gateway_engines": engines, "versions": versions,
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    fs::write(out_dir.join("tcp.json"), serde_json::to_string_pretty(&result).expect("JSON")).expect("write tcp.json");
    fs::write(out_dir.join("tcp.md"), &report.md).expect("write tcp.md");
    println!("wrote {}/tcp.{{json,md}} in {:.0} s", out_dir.display(), started.elapsed().as_secs_f64());
    drop(top);
}

struct Report {
    md: String,
    json: Value,
    targets: Vec<String>,
}

/// `a / b` with two decimals ("—" when either is missing).
fn ratio(a: f64, b: f64) -> String {
    if a.is_finite() && b.is_finite() && b != 0.0 { format!("{:.2}", a / b) } else { "—".into() }
}

fn report(
    loads: &[Load],
    contenders: &[Contender],
    samples: &[Vec<Vec<Sample>>],
    rounds: usize,
    secs: u64,
    quick: bool,
) -> Report {
    let mut md = format!(
        "{} run: {rounds} rounds × {secs} s per contender and load, contenders alternated within every round; \
         medians over rounds. \"× direct\" and \"× HAProxy s-a\" (HAProxy `option splice-auto`) divide a \
         contender's median by theirs. CPU is busy time of the whole machine (user + nice + system + irq + \
         softirq + steal of /proc/stat) over the measurement, so it includes the load generator, the apps, \
         the kernel's softirq work and anything else running; \"proxy\" is the proxy's own processes \
         (utime + stime) and \"others'\" the processes of other users of the machine (outside this bench's \
         process tree, kernel threads excluded), both already inside the system figure.\n",
        if quick { "Quick" } else { "Full" }
    );
    let others: Vec<f64> =
        samples.iter().flatten().flatten().map(|s| s.others_cpus).filter(|v| v.is_finite()).collect();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    md.push_str(&format!(
        "\nOther users' processes took {:.2} of the {cpus} CPUs on average during the runs ({:.2}–{:.2} per run; \
         \"others' CPUs\" in the echo tables is the median during that load's runs): what they take inflates \
         absolute figures and tail latencies alike for every contender.\n",
        others.iter().sum::<f64>() / others.len().max(1) as f64,
        others.iter().copied().fold(f64::INFINITY, f64::min),
        others.iter().copied().fold(0.0, f64::max),
    ));
    let mut json_loads = serde_json::Map::new();
    let mut targets = Vec::new();
    for (li, load) in loads.iter().enumerate() {
        let med = |ci: usize, f: fn(&Sample) -> f64| median(samples[li][ci].iter().map(f).collect());
        let errors = |ci: usize| samples[li][ci].iter().map(|s| s.errors).sum::<u64>();
        let mut jl = serde_json::Map::new();
        md.push_str(&format!("\n### {}\n\n", load.name()));
        match load {
            Load::Throughput(_) | Load::ConnectionRate => {
                let (unit, cpu_unit) = match load {
                    Load::ConnectionRate => ("conn/s", "CPU s / 10k conn"),
                    _ => ("Gb/s", "CPU s / GB"),
                };
                let last = if *load == Load::ConnectionRate { "errors" } else { "retransmits" };
                md.push_str(&format!(
                    "| contender | {unit} | min–max | × direct | × HAProxy s-a | {cpu_unit} (system) | × direct | \
                     × HAProxy s-a | proxy {cpu_unit} | others' {cpu_unit} | {last} |\n\
                     | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n"
                ));
                let (v_direct, v_hs) = (med(DIRECT, |s| s.value), med(HAPROXY_SPLICE, |s| s.value));
                let (c_direct, c_hs) = (med(DIRECT, |s| s.cpu_system), med(HAPROXY_SPLICE, |s| s.cpu_system));
                for (ci, c) in contenders.iter().enumerate() {
                    let values: Vec<f64> = samples[li][ci].iter().map(|s| s.value).collect();
                    let (min, max) = (
                        values.iter().copied().filter(|v| v.is_finite()).fold(f64::INFINITY, f64::min),
                        values.iter().copied().filter(|v| v.is_finite()).fold(0.0, f64::max),
                    );
                    let (v, cpu, proxy) = (med(ci, |s| s.value), med(ci, |s| s.cpu_system), med(ci, |s| s.cpu_proxy));
                    let others = med(ci, |s| s.cpu_others);
                    let retrans: u64 = samples[li][ci].iter().map(|s| s.retransmits).sum();
                    let cps = *load == Load::ConnectionRate;
                    let fmt_v = |x: f64| if cps { format!("{x:.0}") } else { format!("{x:.2}") };
                    let fmt_c = |x: f64| format!("{x:.2}");
                    md.push_str(&format!(
                        "| {} | {} | {}–{} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                        c.name,
                        fmt_v(v),
                        fmt_v(min),
                        fmt_v(max),
                        ratio(v, v_direct),
                        ratio(v, v_hs),
                        fmt_c(cpu),
                        ratio(cpu, c_direct),
                        ratio(cpu, c_hs),
                        if ci == DIRECT { "—".into() } else { fmt_c(proxy) },
                        fmt_c(others),
                        if *load == Load::ConnectionRate { errors(ci) } else { retrans },
                    ));
                    jl.insert(
                        c.key.into(),
                        json!({"median": v, "min": min, "max": max, "rounds": values, "unit": unit,
                               "cpu_system_median": cpu, "cpu_proxy_median": proxy, "cpu_others_median": others, "cpu_unit": cpu_unit,
                               "cpu_system_rounds": samples[li][ci].iter().map(|s| s.cpu_system).collect::<Vec<_>>(),
                               "cpu_proxy_rounds": samples[li][ci].iter().map(|s| s.cpu_proxy).collect::<Vec<_>>(),
                               "cpu_others_rounds": samples[li][ci].iter().map(|s| s.cpu_others).collect::<Vec<_>>(),
                               "vs_direct": v / v_direct, "vs_haproxy_splice_auto": v / v_hs,
                               "cpu_vs_direct": cpu / c_direct, "cpu_vs_haproxy_splice_auto": cpu / c_hs,
                               "errors": errors(ci), "retransmits": retrans}),
                    );
                }
                let g = med(GW_SPLICE, |s| s.value);
                let gc = med(GW_SPLICE, |s| s.cpu_system);
                let (h, hs) = (med(HAPROXY, |s| s.value), v_hs);
                let (hc, hsc) = (med(HAPROXY, |s| s.cpu_system), c_hs);
                let met = |ok: bool| if ok { "met" } else { "NOT met" };
                if let Load::Throughput(n) = load {
                    targets.push(format!(
                        "{n} stream{}: gateway splice {g:.2} Gb/s vs HAProxy {h:.2} and HAProxy splice-auto {hs:.2} \
                         (target ≥ both: {}); CPU {gc:.2} s/GB vs {hc:.2} and {hsc:.2} (target ≤ both: {}); \
                         {:.2}× direct (target ≥ 0.5: {}); gateway copy {:.2} Gb/s, {:.2} s/GB",
                        if *n == 1 { "" } else { "s" },
                        met(g >= h && g >= hs),
                        met(gc <= hc && gc <= hsc),
                        g / v_direct,
                        met(g / v_direct >= 0.5),
                        med(GW_COPY, |s| s.value),
                        med(GW_COPY, |s| s.cpu_system),
                    ));
                } else {
                    targets.push(format!(
                        "connection rate: gateway splice {g:.0} conn/s vs HAProxy {h:.0} and HAProxy splice-auto {hs:.0} \
                         ({:.2}× and {:.2}×), CPU {gc:.2} vs {hc:.2} and {hsc:.2} s per 10k connections; \
                         gateway copy {:.0} conn/s (no target set)",
                        g / h,
                        g / hs,
                        med(GW_COPY, |s| s.value)
                    ));
                }
            }
            Load::Echo(_) => {
                md.push_str(
                    "| contender | p50 µs | p99 µs | p99 min–max | p50 × direct | p99 × direct | p50 × HAProxy s-a \
                     | p99 × HAProxy s-a | answered msg/s | lost | others' CPUs |\n\
                     | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
                );
                let (p50_d, p99_d) = (med(DIRECT, |s| s.p50_us), med(DIRECT, |s| s.p99_us));
                let (p50_hs, p99_hs) = (med(HAPROXY_SPLICE, |s| s.p50_us), med(HAPROXY_SPLICE, |s| s.p99_us));
                for (ci, c) in contenders.iter().enumerate() {
                    let (p50, p99, v) = (med(ci, |s| s.p50_us), med(ci, |s| s.p99_us), med(ci, |s| s.value));
                    let p99s: Vec<f64> = samples[li][ci].iter().map(|s| s.p99_us).filter(|v| v.is_finite()).collect();
                    md.push_str(&format!(
                        "| {} | {p50:.0} | {p99:.0} | {:.0}–{:.0} | {} | {} | {} | {} | {v:.0} | {} | {:.2} |\n",
                        c.name,
                        p99s.iter().copied().fold(f64::INFINITY, f64::min),
                        p99s.iter().copied().fold(0.0, f64::max),
                        ratio(p50, p50_d),
                        ratio(p99, p99_d),
                        ratio(p50, p50_hs),
                        ratio(p99, p99_hs),
                        errors(ci),
                        med(ci, |s| s.others_cpus),
                    ));
                    jl.insert(
                        c.key.into(),
                        json!({"p50_us": p50, "p99_us": p99, "answered_per_s": v, "lost": errors(ci),
                               "p50_us_rounds": samples[li][ci].iter().map(|s| s.p50_us).collect::<Vec<_>>(),
                               "p99_us_rounds": samples[li][ci].iter().map(|s| s.p99_us).collect::<Vec<_>>(),
                               "p99_vs_direct": p99 / p99_d, "p99_vs_haproxy_splice_auto": p99 / p99_hs,
                               "others_cpus_rounds": samples[li][ci].iter().map(|s| s.others_cpus).collect::<Vec<_>>()}),
                    );
                }
                let g = med(GW_SPLICE, |s| s.p99_us);
                let (h, hs) = (med(HAPROXY, |s| s.p99_us), p99_hs);
                targets.push(format!(
                    "{}: gateway splice p99 {g:.0} µs vs HAProxy {h:.0} and HAProxy splice-auto {hs:.0} µs \
                     (target ≤ both: {}); gateway copy {:.0} µs, direct {p99_d:.0} µs",
                    load.name(),
                    if g <= h && g <= hs { "met" } else { "NOT met" },
                    med(GW_COPY, |s| s.p99_us),
                ));
            }
        }
        json_loads.insert(load.key(), Value::Object(jl));
    }
    md.push_str("\n### Targets\n\n");
    for t in &targets {
        md.push_str(&format!("- {t}\n"));
    }
    Report { md, json: Value::Object(json_loads), targets }
}
