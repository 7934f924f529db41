//! Enforcement cost on veth and policy-update cost against iptables and nft,
//! in namespaces of our own.
//!
//! Topology: one generator namespace and, per contender ("lane"), a host namespace and a veth
//! pair `g<k>` (generator) ↔ `in` (host), plus `out` (host) ↔ `s<k>` in a shared sandbox
//! namespace. The host forwards 198.18.0.0/15 (the sandbox addresses) to the sandbox namespace,
//! which blackholes it. Lanes:
//!
//! - `generator`: frames for another MAC, dropped at the host's IP entry: the generator plus the
//!   cheapest delivery, subtracted from every other lane;
//! - `forward`: no filter, forwarded to the sandbox namespace;
//! - `tcx`: our `sandbox_in` on `out` (tcx egress), loaded by `Dataplane` with N sandboxes;
//! - `iptables`: one `FORWARD` rule per sandbox port (`-d A -p tcp --dport P -m mark --mark M
//!   -j ACCEPT`), then a SYN drop: the same allow-list;
//! - `nft`: one rule looking up `ip daddr . tcp dport` in a set holding every sandbox port.
//!
//! trafgen (one worker, which pins itself to a CPU) floods SYNs from an unmarked source to the
//! allowed ports of random registered sandboxes: every contender judges each packet as a new
//! connection not from the gateway and drops it. CPU per packet = (the worker's run time +
//! every ksoftirqd's run time, from `/proc/<pid>/schedstat`, ns-exact) / packets sent (the
//! generator link's tx counters), over a steady window. The receive path of a veth runs in the
//! sender's context (netif_rx, then the softirq on `local_bh_enable`), so nothing escapes
//! these two counters except softirqs that land on an unrelated task, which we keep rare by
//! not saturating the CPU.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs,
    net::Ipv4Addr,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use gateway::dataplane::{
    Dataplane, DataplaneSettings, PortGrant, SandboxPolicy, XdpModeSetting, bpffs::PinDir, maps::KernelMaps,
};
use gateway_common::{
    IPPROTO_TCP,
    counters::{Hook, Reason},
    policy::{Endpoint, origin},
};
use gateway_tests::harness::Netns;
use serde_json::{Value, json};

use crate::stats::{median, percentile, spread};

/// The ports every bench sandbox declares.
pub const PORTS: [u16; 3] = [3000, 5173, 9000];
const MARK: u32 = 0x6777;
/// Frames per trafgen configuration (cycled round robin).
const TEMPLATES: usize = 1024;

/// Address of bench sandbox `i` (198.18.64.0 + i; 100,000 end at 198.19.198.159).
pub fn sandbox_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 64, 0)) + i as u32)
}

pub fn policies(n: usize, interface: &str) -> Vec<SandboxPolicy> {
    (0..n)
        .map(|i| SandboxPolicy {
            address: sandbox_addr(i),
            interface: interface.to_string(),
            ports: PORTS.iter().map(|p| (*p, PortGrant { origin: origin::DECLARED, preview_refs: 0 })).collect(),
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Generator,
    Forward,
    Tcx,
    Iptables,
    Nft,
}

impl Kind {
    const ALL: [Kind; 5] = [Kind::Generator, Kind::Forward, Kind::Tcx, Kind::Iptables, Kind::Nft];
    fn name(self) -> &'static str {
        match self {
            Kind::Generator => "generator alone",
            Kind::Forward => "forward, no filter",
            Kind::Tcx => "gateway tcx",
            Kind::Iptables => "iptables",
            Kind::Nft => "nft set",
        }
    }
    fn key(self) -> &'static str {
        match self {
            Kind::Generator => "generator",
            Kind::Forward => "forward",
            Kind::Tcx => "tcx",
            Kind::Iptables => "iptables",
            Kind::Nft => "nft",
        }
    }
}

struct Lane {
    kind: Kind,
    host: Netns,
    gen_if: String,
    host_mac: String,
    gen_mac: String,
    cfg: PathBuf,
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

fn mac_of(ns: &Netns, ifname: &str) -> String {
    let j: Value =
        serde_json::from_str(&ns.ip(&["-j", "link", "show", "dev", ifname]).expect("ip link show")).expect("json");
    j[0]["address"].as_str().expect("mac").to_string()
}

fn link_counter(ns: &Netns, ifname: &str, dir: &str) -> u64 {
    let j: Value =
        serde_json::from_str(&ns.ip(&["-j", "-s", "link", "show", "dev", ifname]).expect("ip -s link")).expect("json");
    let s = &j[0]["stats64"][dir];
    s["packets"].as_u64().unwrap_or(0) + s["dropped"].as_u64().unwrap_or(0)
}

fn schedstat_ns(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

fn ksoftirqds() -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/")) {
            out.push(pid);
        }
    }
    out
}

fn children(pid: u32) -> Vec<u32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// A flood's CPU per packet.
struct Sample {
    packets: u64,
    delivered: u64,
    cpu_ns: u64,
}

impl Sample {
    fn ns_per_packet(&self) -> f64 {
        self.cpu_ns as f64 / self.packets.max(1) as f64
    }
}

fn flood(gens: &Netns, lane: &Lane, secs: f64) -> Sample {
    let mut child = Command::new("ip")
        .args(["netns", "exec", gens.name(), "trafgen", "-o", &lane.gen_if, "-i"])
        .arg(&lane.cfg)
        .args(["-P", "1", "--no-sock-mem", "-Q"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("spawn trafgen (apt-get install netsniff-ng)");
    let pid = child.id();
    let kill = |child: &mut std::process::Child| {
        // SAFETY: plain syscall on the process group we created.
        unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        let _ = child.wait();
    };
    // The worker is trafgen's child; wait until it sends.
    let deadline = Instant::now() + Duration::from_secs(10);
    let worker = loop {
        if let Some(w) = children(pid).first().copied() {
            break w;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            kill(&mut child);
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = std::io::Read::read_to_string(&mut e, &mut err);
            }
            panic!("trafgen did not start: {err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    std::thread::sleep(Duration::from_millis(300));
    let ks = ksoftirqds();
    let cpu = || schedstat_ns(worker) + ks.iter().map(|p| schedstat_ns(*p)).sum::<u64>();
    let (c0, t0, d0) = (cpu(), link_counter(gens, &lane.gen_if, "tx"), link_counter(&lane.host, "in", "rx"));
    std::thread::sleep(Duration::from_secs_f64(secs));
    let (c1, t1, d1) = (cpu(), link_counter(gens, &lane.gen_if, "tx"), link_counter(&lane.host, "in", "rx"));
    kill(&mut child);
    Sample { packets: t1 - t0, delivered: d1.saturating_sub(d0), cpu_ns: c1 - c0 }
}

fn syn_frame(src_mac: [u8; 6], dst_mac: [u8; 6], dst: Ipv4Addr, dport: u16, sport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    etherparse::PacketBuilder::ethernet2(src_mac, dst_mac)
        .ipv4([198, 18, 0, 2], dst.octets(), 64)
        .tcp(sport, dport, 1, 64240)
        .syn()
        .write(&mut out, &[])
        .expect("frame");
    out
}

fn parse_mac(s: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (i, p) in s.split(':').enumerate().take(6) {
        m[i] = u8::from_str_radix(p, 16).expect("mac");
    }
    m
}

/// A trafgen configuration of `TEMPLATES` SYNs to (random sandbox < n, one of its ports).
fn write_cfg(lane: &Lane, n: usize) {
    let dst_mac = if lane.kind == Kind::Generator { [2, 0, 0, 0, 0, 0x99] } else { parse_mac(&lane.host_mac) };
    let src_mac = parse_mac(&lane.gen_mac);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut text = String::new();
    for k in 0..TEMPLATES {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = (x % n as u64) as usize;
        let frame =
            syn_frame(src_mac, dst_mac, sandbox_addr(i), PORTS[(x >> 32) as usize % 3], 1024 + (k as u16 % 60000));
        text.push_str("{ ");
        for (j, b) in frame.iter().enumerate() {
            let _ = write!(text, "{}0x{b:02x}", if j == 0 { "" } else { ", " });
        }
        text.push_str(" }\n");
    }
    fs::write(&lane.cfg, text).expect("write trafgen config");
}

fn iptables_rules(n: usize) -> String {
    let mut s = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -p tcp ! --syn -j ACCEPT\n",
    );
    for i in 0..n {
        for p in PORTS {
            let _ = writeln!(
                s,
                "-A FORWARD -d {}/32 -p tcp -m tcp --dport {p} -m mark --mark 0x{MARK:x} -j ACCEPT",
                sandbox_addr(i)
            );
        }
    }
    s.push_str("-A FORWARD -p tcp --syn -j DROP\nCOMMIT\n");
    s
}

fn nft_ruleset(n: usize) -> String {
    let mut s = String::from(
        "table ip gwb\ndelete table ip gwb\ntable ip gwb {\n  set allowed {\n    type ipv4_addr . inet_service\n    size 1048576\n",
    );
    if n > 0 {
        s.push_str("    elements = {");
        for i in 0..n {
            for (j, p) in PORTS.iter().enumerate() {
                let _ = write!(s, "{}{} . {p}", if i == 0 && j == 0 { " " } else { ", " }, sandbox_addr(i));
            }
        }
        s.push_str(" }\n");
    }
    let _ = write!(
        s,
        "  }}\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    tcp flags & (syn | ack) != syn accept\n    ip daddr . tcp dport @allowed meta mark 0x{MARK:x} accept\n    tcp flags & (syn | ack) == syn drop\n  }}\n}}\n"
    );
    s
}

/// Runs `program args` from a thread inside `ns` (no `ip netns exec` in the timing) and returns
/// its wall time in µs.
fn timed_in(ns: &Netns, program: &str, args: &[&str], stdin_file: Option<&Path>) -> f64 {
    ns.run(|| {
        let mut cmd = Command::new(program);
        cmd.args(args).stdout(Stdio::null());
        if let Some(f) = stdin_file {
            cmd.stdin(fs::File::open(f).expect("stdin file"));
        }
        let t = Instant::now();
        let out = cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"));
        let us = t.elapsed().as_secs_f64() * 1e6;
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        us
    })
}

pub struct Options {
    pub levels: Vec<usize>,
    pub rounds: usize,
    pub secs: f64,
    pub update_reps: usize,
}

/// Runs items 3 and 4; returns the text report and the JSON.
pub fn run(opts: &Options) -> (String, Value) {
    let gens = Netns::new();
    let sbx = Netns::new();
    let work_dir = gateway_tests::gateway_process::temp_dir("gwbench-veth");
    let work = work_dir.path();
    for ns in [&gens, &sbx] {
        let _ = ns.sysctl("net/ipv6/conf/all/disable_ipv6", "1");
        let _ = ns.sysctl("net/ipv6/conf/default/disable_ipv6", "1");
    }
    sbx.ip(&["route", "add", "blackhole", "198.18.0.0/15"]).expect("blackhole");
    let mut lanes = Vec::new();
    for (k, kind) in Kind::ALL.into_iter().enumerate() {
        let host = Netns::new();
        for key in ["net/ipv6/conf/all/disable_ipv6", "net/ipv6/conf/default/disable_ipv6", "net/ipv4/ip_forward"] {
            host.sysctl(key, "1").expect("sysctl");
        }
        for key in ["net/ipv4/conf/all/rp_filter", "net/ipv4/conf/default/rp_filter"] {
            host.sysctl(key, "0").expect("sysctl");
        }
        let gen_if = format!("g{k}");
        let s_if = format!("s{k}");
        ip(&["link", "add", &gen_if, "netns", gens.name(), "type", "veth", "peer", "name", "in", "netns", host.name()]);
        ip(&["link", "add", "out", "netns", host.name(), "type", "veth", "peer", "name", &s_if, "netns", sbx.name()]);
        let h_out = format!("198.18.1.{}/30", 4 * k + 1);
        let s_addr = format!("198.18.1.{}", 4 * k + 2);
        gens.ip(&["link", "set", &gen_if, "up"]).expect("up");
        host.ip(&["addr", "add", "198.18.0.1/30", "dev", "in"]).expect("addr");
        host.ip(&["addr", "add", &h_out, "dev", "out"]).expect("addr");
        host.ip(&["link", "set", "in", "up"]).expect("up");
        host.ip(&["link", "set", "out", "up"]).expect("up");
        sbx.ip(&["addr", "add", &format!("{s_addr}/30"), "dev", &s_if]).expect("addr");
        sbx.ip(&["link", "set", &s_if, "up"]).expect("up");
        let s_mac = mac_of(&sbx, &s_if);
        host.ip(&["neigh", "replace", &s_addr, "lladdr", &s_mac, "dev", "out", "nud", "permanent"]).expect("neigh");
        host.ip(&["route", "add", "198.18.0.0/15", "via", &s_addr, "dev", "out"]).expect("route");
        let host_mac = mac_of(&host, "in");
        let gen_mac = mac_of(&gens, &gen_if);
        let cfg = work.join(format!("{}.cfg", kind.key()));
        lanes.push(Lane { kind, host, gen_if, host_mac, gen_mac, cfg });
    }
    let lane = |k: Kind| lanes.iter().find(|l| l.kind == k).expect("lane");
    let tcx = lane(Kind::Tcx);
    let ipt = lane(Kind::Iptables);
    let nft = lane(Kind::Nft);

    // Everything touching our data plane runs inside the tcx lane's host namespace (interface
    // names and tcx attachment resolve in the calling thread's namespace).
    tcx.host.run(|| {
        let pins = PathBuf::from(format!("/sys/fs/bpf/gwbench-veth-{}", std::process::id()));
        let _rm_pins = crate::RemoveDir(pins.clone());
        let settings = DataplaneSettings {
            enabled: true,
            mark: MARK,
            bpffs: pins.clone(),
            public_interface: None,
            xdp_mode: XdpModeSetting::Skb,
            protected: vec![],
            public_ports: vec![],
            host_allow: vec![],
        };
        let dp = Dataplane::open(&settings).expect("open dataplane");
        let maps = KernelMaps::open(&PinDir::new(&pins).maps()).expect("maps");
        let judged = || {
            maps.verdict_counters()
                .expect("verdicts")
                .iter()
                .filter(|(h, r, _)| *h == Hook::SandboxIn && *r == Reason::DropNotFromGateway)
                .map(|c| c.2)
                .sum::<u64>()
        };
        let mut text = String::new();
        let mut flood_json = Vec::new();
        let mut update_json = Vec::new();
        let _ = writeln!(
            text,
            "\n## Enforcement cost on veth: trafgen SYN flood, unmarked, to allowed ports of random sandboxes\n\
             CPU ns per packet (trafgen worker + ksoftirqd, schedstat), median of {} alternated rounds × {:.1} s; \
             receive cost = lane − generator alone",
            opts.rounds, opts.secs
        );
        for &n in &opts.levels {
            let t = Instant::now();
            dp.reconcile(&policies(n, "out")).expect("reconcile");
            let tcx_load = t.elapsed().as_secs_f64();
            let rules = work.join("rules.ipt");
            fs::write(&rules, iptables_rules(n)).expect("rules");
            let ipt_load = timed_in(&ipt.host, "iptables-restore", &[rules.to_str().expect("path")], None) / 1e6;
            let set = work.join("set.nft");
            fs::write(&set, nft_ruleset(n)).expect("nft");
            let nft_load = timed_in(&nft.host, "nft", &["-f", set.to_str().expect("path")], None) / 1e6;
            for l in &lanes {
                write_cfg(l, n);
            }
            let mut samples: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
            let mut sent: BTreeMap<&'static str, (u64, u64)> = BTreeMap::new();
            let judged0 = judged();
            for _ in 0..opts.rounds {
                for l in &lanes {
                    let s = flood(&gens, l, opts.secs);
                    samples.entry(l.kind.key()).or_default().push(s.ns_per_packet());
                    let e = sent.entry(l.kind.key()).or_default();
                    e.0 += s.packets;
                    e.1 += s.delivered;
                }
            }
            let judged_by_tcx = judged() - judged0;
            let base = median(&mut samples["generator"].clone());
            let recv = |k: Kind| median(&mut samples[k.key()].clone()) - base;
            let _ = writeln!(
                text,
                "\n### {n} sandboxes × 3 ports (loaded: tcx reconcile {tcx_load:.2} s, iptables-restore {ipt_load:.2} s, nft -f {nft_load:.2} s)"
            );
            let _ = writeln!(text, "{:<22} {:>12} {:>14} {:>12} {:>12} {:>10}", "lane", "ns/packet", "receive ns", "spread ns", "packets", "× iptables");
            let mut lanes_json = Vec::new();
            for k in Kind::ALL {
                let v = &samples[k.key()];
                let m = median(&mut v.clone());
                let r = if k == Kind::Generator { 0.0 } else { m - base };
                let ratio = if k == Kind::Generator { f64::NAN } else { r / recv(Kind::Iptables) };
                let _ = writeln!(text, "{:<22} {:>12.0} {:>14.0} {:>12.0} {:>12} {:>10.2}", k.name(), m, r, spread(v), sent[k.key()].0, ratio);
                lanes_json.push(json!({
                    "lane": k.key(), "ns_per_packet": m, "receive_ns": r, "spread_ns": spread(v),
                    "packets": sent[k.key()].0, "delivered_to_host": sent[k.key()].1,
                    "x_iptables": if ratio.is_finite() { json!(ratio) } else { Value::Null },
                }));
            }
            let tcx_sent = sent["tcx"].0;
            let _ = writeln!(
                text,
                "tcx judged {judged_by_tcx} SYNs (drop_not_from_gateway) of ≥ {tcx_sent} sent in the measured windows; gateway/iptables receive cost {:.2}, gateway/nft {:.2}",
                recv(Kind::Tcx) / recv(Kind::Iptables),
                recv(Kind::Tcx) / recv(Kind::Nft)
            );
            flood_json.push(json!({
                "sandboxes": n, "ports": n * 3, "lanes": lanes_json, "tcx_judged": judged_by_tcx,
                "load_seconds": {"tcx": tcx_load, "iptables": ipt_load, "nft": nft_load},
            }));

            // Policy-update cost at this size.
            update_json.push(updates(&mut text, &dp, &maps, ipt, nft, work, n, opts.update_reps));
        }
        dp.reconcile(&[]).expect("unload");
        (text, json!({"flood": flood_json, "updates": update_json, "rounds": opts.rounds, "seconds_per_run": opts.secs}))
    })
}

/// Policy updates with `n` sandboxes loaded: ours (one call, and per entry in a batch) and the
/// same change with iptables and nft (wall time of the command, run inside the namespace).
#[allow(clippy::too_many_arguments)]
fn updates(
    text: &mut String,
    dp: &Dataplane,
    maps: &KernelMaps,
    ipt: &Lane,
    nft: &Lane,
    work: &Path,
    n: usize,
    reps: usize,
) -> Value {
    let probe = sandbox_addr(n / 2);
    let policy = |ports: &[u16]| SandboxPolicy {
        address: probe,
        interface: "out".into(),
        ports: ports.iter().map(|p| (*p, PortGrant { origin: origin::DECLARED, preview_refs: 0 })).collect(),
    };
    let mut visible = Vec::new();
    for i in 0..reps.max(20) {
        let port = 4000 + (i % 2) as u16;
        let t = Instant::now();
        dp.apply_sandbox(&policy(&[3000, 5173, 9000, port])).expect("apply");
        let ok = maps.policy_get(&Endpoint::new(probe.octets(), port, IPPROTO_TCP)).is_some();
        visible.push(t.elapsed().as_secs_f64() * 1e6);
        assert!(ok, "entry not visible");
    }
    dp.apply_sandbox(&policy(&PORTS)).expect("restore");
    // Batched: one new sandbox with 1,000 ports, added then removed.
    let batch_addr = Ipv4Addr::new(198, 19, 250, 1);
    let big = SandboxPolicy {
        address: batch_addr,
        interface: "out".into(),
        ports: (10_000..11_000u16).map(|p| (p, PortGrant { origin: origin::DECLARED, preview_refs: 0 })).collect(),
    };
    let mut ours_batch = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        dp.apply_sandbox(&big).expect("apply 1000");
        ours_batch.push(t.elapsed().as_secs_f64() * 1e6 / 1000.0);
        dp.remove_sandbox(batch_addr).expect("remove");
    }

    // iptables-nft fetches and walks the whole ruleset to delete a rule by its spec: ~0.1 ms
    // per rule in the chain, so at 300,000 rules one `-D` takes many seconds and a batch of
    // 1,000 deletes hours. Fewer repetitions there, and no batch delete.
    let big_chain = n >= 20_000;
    let ipt_reps = if big_chain { 1 } else { reps };
    let rule = |port: u16| {
        vec![
            "-d".to_string(),
            format!("{probe}/32"),
            "-p".into(),
            "tcp".into(),
            "-m".into(),
            "tcp".into(),
            "--dport".into(),
            port.to_string(),
            "-m".into(),
            "mark".into(),
            "--mark".into(),
            format!("0x{MARK:x}"),
            "-j".into(),
            "ACCEPT".into(),
        ]
    };
    let mut ipt_add = Vec::new();
    let mut ipt_del = Vec::new();
    for _ in 0..ipt_reps {
        let mut a = vec!["-A".to_string(), "FORWARD".into()];
        a.extend(rule(4000));
        let args: Vec<&str> = a.iter().map(String::as_str).collect();
        ipt_add.push(timed_in(&ipt.host, "iptables", &args, None));
        let mut d = vec!["-D".to_string(), "FORWARD".into()];
        d.extend(rule(4000));
        let args: Vec<&str> = d.iter().map(String::as_str).collect();
        ipt_del.push(timed_in(&ipt.host, "iptables", &args, None));
    }
    let mut add_file = String::from("*filter\n");
    let mut del_file = String::from("*filter\n");
    for p in 10_000..11_000u16 {
        let _ = writeln!(
            add_file,
            "-A FORWARD -d {batch_addr}/32 -p tcp -m tcp --dport {p} -m mark --mark 0x{MARK:x} -j ACCEPT"
        );
        let _ = writeln!(
            del_file,
            "-D FORWARD -d {batch_addr}/32 -p tcp -m tcp --dport {p} -m mark --mark 0x{MARK:x} -j ACCEPT"
        );
    }
    add_file.push_str("COMMIT\n");
    del_file.push_str("COMMIT\n");
    let (af, df) = (work.join("add.ipt"), work.join("del.ipt"));
    fs::write(&af, add_file).expect("write");
    fs::write(&df, del_file).expect("write");
    let ipt_batch = timed_in(&ipt.host, "iptables-restore", &["--noflush", af.to_str().expect("path")], None) / 1000.0;
    let ipt_batch_del = if big_chain {
        // Remove the batch by flushing and reloading would time something else: leave it.
        f64::NAN
    } else {
        timed_in(&ipt.host, "iptables-restore", &["--noflush", df.to_str().expect("path")], None) / 1000.0
    };

    let elem = format!("{{ {probe} . 4000 }}");
    let mut nft_add = Vec::new();
    let mut nft_del = Vec::new();
    for _ in 0..reps {
        nft_add.push(timed_in(&nft.host, "nft", &["add", "element", "ip", "gwb", "allowed", &elem], None));
        nft_del.push(timed_in(&nft.host, "nft", &["delete", "element", "ip", "gwb", "allowed", &elem], None));
    }
    let mut elems = String::new();
    for p in 10_000..11_000u16 {
        let _ = write!(elems, "{}{batch_addr} . {p}", if elems.is_empty() { "" } else { ", " });
    }
    let (naf, ndf) = (work.join("add.nft"), work.join("del.nft"));
    fs::write(&naf, format!("add element ip gwb allowed {{ {elems} }}\n")).expect("write");
    fs::write(&ndf, format!("delete element ip gwb allowed {{ {elems} }}\n")).expect("write");
    let nft_batch = timed_in(&nft.host, "nft", &["-f", naf.to_str().expect("path")], None) / 1000.0;
    let nft_batch_del = timed_in(&nft.host, "nft", &["-f", ndf.to_str().expect("path")], None) / 1000.0;

    let m = |v: &Vec<f64>| median(&mut v.clone());
    let p99 = |v: &Vec<f64>| percentile(&mut v.clone(), 0.99);
    let _ = writeln!(
        text,
        "policy updates with {n} sandboxes loaded (median wall time; iptables/nft run as processes inside the namespace):"
    );
    let _ = writeln!(
        text,
        "  gateway apply_sandbox, one port opened + one closed, call → visible in map: median {:.1} µs, p99 {:.1} µs ({} calls)",
        m(&visible),
        p99(&visible),
        visible.len()
    );
    let _ = writeln!(text, "  gateway batched, 1,000 ports in one call: {:.3} µs per entry", m(&ours_batch));
    let _ = writeln!(
        text,
        "  iptables -A: {:.0} µs, -D: {:.0} µs ({ipt_reps} each); iptables-restore --noflush 1,000 rules: {:.1} µs per entry (delete {:.1})",
        m(&ipt_add),
        m(&ipt_del),
        ipt_batch,
        ipt_batch_del
    );
    let _ = writeln!(
        text,
        "  nft add element: {:.0} µs, delete element: {:.0} µs ({reps} each); nft -f 1,000 elements: {:.2} µs per entry (delete {:.2})",
        m(&nft_add),
        m(&nft_del),
        nft_batch,
        nft_batch_del
    );
    json!({
        "sandboxes": n,
        "gateway_call_to_visible_us": {"median": m(&visible), "p99": p99(&visible), "calls": visible.len()},
        "gateway_batch_us_per_entry": m(&ours_batch),
        "iptables_append_us": m(&ipt_add), "iptables_delete_us": m(&ipt_del), "iptables_reps": ipt_reps,
        "iptables_restore_us_per_entry": ipt_batch, "iptables_restore_delete_us_per_entry": ipt_batch_del,
        "nft_add_element_us": m(&nft_add), "nft_delete_element_us": m(&nft_del),
        "nft_batch_us_per_entry": nft_batch, "nft_batch_delete_us_per_entry": nft_batch_del,
    })
}
