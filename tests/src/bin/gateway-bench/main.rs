//! `cargo xtask bench`: data-plane figures.
//!
//! 1. Program cost: `BPF_PROG_TEST_RUN` ns per packet for each path, beside a trivial program
//!    loaded from the same object, measured in the same run (alternated, median of rounds).
//! 2. Policy updates: `Dataplane::apply_sandbox` latency for one port (median, p99), and per
//!    entry for a sandbox with 1,000 ports (batched syscalls).
//! 3. Scale: the same program costs and kernel memory with 100,000 sandboxes × 3 ports loaded.
//!
//! Runs as root; creates a veth pair `gwbench<pid>`/`…p` and a private pin directory, both
//! removed at the end (also on panic).

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::PathBuf,
    process::Command,
    time::Instant,
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use gateway::dataplane::{
    Dataplane, DataplaneSettings, PortGrant, SandboxPolicy, XdpModeSetting, bpffs::PinDir, load_object, maps::KernelMaps,
};
use gateway_common::{
    IPPROTO_TCP, names, testpkt,
    policy::{DataplaneConfig, Endpoint, PolicyValue, PortKey, SandboxKey, SandboxRecord, origin},
};

const MARK: u32 = 0x6777;

struct Cleanup {
    root: PathBuf,
    ifname: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = Command::new("ip").args(["link", "del", &self.ifname]).status();
    }
}

fn skb_ctx(mark: u32) -> [u8; 192] {
    let mut ctx = [0u8; 192];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    ctx[40..44].copy_from_slice(&1u32.to_ne_bytes());
    ctx
}

fn tcp(dst: [u8; 4], dport: u16, syn: bool) -> Vec<u8> {
    testpkt::tcp([198, 18, 0, 1], dst, dport, syn, !syn)
}

/// One program path to time.
struct Path {
    name: &'static str,
    prog: &'static str,
    pkt: Vec<u8>,
    mark: u32,
}

fn time_path(ebpf: &mut aya::Ebpf, p: &Path, repeat: u32) -> f64 {
    let mut out = vec![0u8; p.pkt.len() + 256];
    let ctx = skb_ctx(p.mark);
    let opts = TestRunOptions {
        data_in: Some(&p.pkt),
        data_out: Some(&mut out),
        ctx_in: if p.prog == names::PROG_EDGE_GUARD { None } else { Some(&ctx) },
        repeat,
        ..Default::default()
    };
    let prog = ebpf.program_mut(p.prog).expect("program");
    let result = if p.prog == names::PROG_EDGE_GUARD {
        let x: &mut Xdp = prog.try_into().expect("xdp");
        x.test_run(opts)
    } else {
        let c: &mut SchedClassifier = prog.try_into().expect("classifier");
        c.test_run(opts)
    };
    result.expect("test run").duration.as_nanos() as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn standard_paths(sbx: [u8; 4]) -> Vec<Path> {
    vec![
        Path { name: "trivial program (baseline)", prog: names::PROG_BENCH_NOOP, pkt: tcp(sbx, 3000, true), mark: MARK },
        Path { name: "sandbox_in: allowed SYN", prog: names::PROG_SANDBOX_IN, pkt: tcp(sbx, 3000, true), mark: MARK },
        Path { name: "sandbox_in: dropped SYN (unmarked)", prog: names::PROG_SANDBOX_IN, pkt: tcp(sbx, 3000, true), mark: 0 },
        Path { name: "sandbox_in: dropped SYN (closed port)", prog: names::PROG_SANDBOX_IN, pkt: tcp(sbx, 3001, true), mark: MARK },
        Path { name: "sandbox_in: established", prog: names::PROG_SANDBOX_IN, pkt: tcp(sbx, 3000, false), mark: 0 },
        Path { name: "sandbox_in: non-IP (ARP)", prog: names::PROG_SANDBOX_IN, pkt: testpkt::arp(), mark: 0 },
        Path { name: "sandbox_out: to the internet", prog: names::PROG_SANDBOX_OUT, pkt: tcp([1, 1, 1, 1], 443, true), mark: 0 },
        Path { name: "edge_guard: dropped SYN", prog: names::PROG_EDGE_GUARD, pkt: tcp([198, 18, 0, 1], 22, true), mark: 0 },
    ]
}

/// Median ns/packet of each path, its ratio to the first (the baseline), and the spread.
fn program_costs(ebpf: &mut aya::Ebpf, paths: &[Path], rounds: usize, repeat: u32) -> Vec<(String, f64, f64, f64)> {
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); paths.len()];
    for _ in 0..rounds {
        // Alternate every path within each round so drift hits all alike.
        for (i, p) in paths.iter().enumerate() {
            samples[i].push(time_path(ebpf, p, repeat));
        }
    }
    let base = median(&mut samples[0].clone());
    paths
        .iter()
        .zip(samples)
        .map(|(p, mut s)| {
            let min = s.iter().copied().fold(f64::MAX, f64::min);
            let max = s.iter().copied().fold(0.0, f64::max);
            let m = median(&mut s);
            (p.name.to_string(), m, m / base, max - min)
        })
        .collect()
}

fn slab_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Slab:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, repeat, updates) = if quick { (5, 200_000, 300) } else { (7, 1_000_000, 2000) };
    assert!(nix::unistd::Uid::effective().is_root(), "gateway-bench needs root");
    let ifname = format!("gwbench{}", std::process::id() % 100_000);
    let root = PathBuf::from(format!("/sys/fs/bpf/gwbench-{}", std::process::id()));
    let _cleanup = Cleanup { root: root.clone(), ifname: ifname.clone() };
    let peer = format!("{ifname}p");
    let ok = Command::new("ip").args(["link", "add", &ifname, "type", "veth", "peer", "name", &peer]).status().expect("ip");
    assert!(ok.success(), "creating veth {ifname}");
    let _ = Command::new("ip").args(["link", "set", &ifname, "up"]).status();

    println!("# gateway data-plane benchmark ({})", if quick { "quick" } else { "full" });
    println!("machine: {} CPUs, kernel {}", aya::util::nr_cpus().unwrap_or(0), kernel_release());

    // 1. Program cost with a handful of entries.
    let pins = PinDir::new(root.join("prog"));
    let mut ebpf = load_object(&pins, 3).expect("load object");
    let noop: &mut SchedClassifier = ebpf.program_mut(names::PROG_BENCH_NOOP).expect("noop").try_into().expect("tc");
    noop.load().expect("load noop");
    let mut maps = KernelMaps::open(&pins.maps()).expect("maps");
    maps.config.set(0, DataplaneConfig { mark: MARK, flags: 0 }, 0).expect("config");
    maps.sandboxes.insert(SandboxKey { addr: [198, 18, 0, 2] }, SandboxRecord { ifindex: 1, flags: 0 }, 0).expect("sbx");
    maps.policy_insert(Endpoint::new([198, 18, 0, 2], 3000, IPPROTO_TCP), PolicyValue::gateway(origin::DECLARED, 0)).expect("pol");
    maps.public.insert(PortKey::new(443, IPPROTO_TCP), 1, 0).expect("pub");
    println!("\n## Program cost, BPF_PROG_TEST_RUN, repeat {repeat}, median of {rounds} alternated rounds");
    print_costs(&program_costs(&mut ebpf, &standard_paths([198, 18, 0, 2]), rounds, repeat));

    // 2. Policy updates through the control plane's Dataplane.
    let settings = DataplaneSettings {
        enabled: true,
        mark: MARK,
        bpffs: root.join("dp"),
        public_interface: None,
        xdp_mode: XdpModeSetting::Skb,
        protected: vec![],
        public_ports: vec![],
    };
    let dp = Dataplane::open(&settings).expect("open dataplane");
    let dp_maps = KernelMaps::open(&PinDir::new(root.join("dp")).maps()).expect("dp maps");
    let addr = Ipv4Addr::new(198, 18, 0, 2);
    let policy = |ports: &[u16]| SandboxPolicy {
        address: addr,
        interface: ifname.clone(),
        ports: ports.iter().map(|p| (*p, PortGrant { origin: origin::DECLARED, preview_refs: 0 })).collect::<BTreeMap<_, _>>(),
    };
    dp.apply_sandbox(&policy(&[3000])).expect("first apply");
    let mut one = Vec::new();
    let mut visible = Vec::new();
    for i in 0..updates {
        let port = 4000 + (i % 2) as u16;
        let t = Instant::now();
        let took = dp.apply_sandbox(&policy(&[3000, port])).expect("apply");
        let seen = dp_maps.policy_get(&Endpoint::new(addr.octets(), port, IPPROTO_TCP)).is_some();
        visible.push(t.elapsed().as_nanos() as f64 / 1000.0);
        assert!(seen, "entry not visible after apply");
        one.push(took.as_nanos() as f64 / 1000.0);
    }
    println!("\n## Policy update: one port changed (open one, close one), {updates} updates");
    println!("map updates only:        median {:.1} µs, p99 {:.1} µs", median(&mut one.clone()), percentile(&mut one, 0.99));
    println!("call → visible in map:   median {:.1} µs, p99 {:.1} µs", median(&mut visible.clone()), percentile(&mut visible, 0.99));
    let big: Vec<u16> = (10_000..11_000).collect();
    let mut per_entry = Vec::new();
    for round in 0..rounds {
        dp.apply_sandbox(&policy(&[3000])).expect("reset");
        let shifted: Vec<u16> = big.iter().map(|p| p + (round as u16 % 2) * 2000).collect();
        let took = dp.apply_sandbox(&policy(&shifted)).expect("apply 1000");
        per_entry.push(took.as_nanos() as f64 / 1000.0 / 1000.0);
    }
    println!("1,000 ports in one call: median {:.3} µs per entry (batched)", median(&mut per_entry));
    dp.remove_sandbox(addr).expect("remove");

    // 3. Scale: 100,000 sandboxes with 3 ports each.
    let n = if quick { 20_000 } else { 100_000 };
    let slab_before = slab_kib();
    let all: Vec<SandboxPolicy> = (0..n)
        .map(|i| SandboxPolicy {
            address: Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + i as u32),
            interface: ifname.clone(),
            ports: [3000u16, 5173, 9000].iter().map(|p| (*p, PortGrant { origin: origin::DECLARED, preview_refs: 0 })).collect(),
        })
        .collect();
    let t = Instant::now();
    dp.reconcile(&all).expect("reconcile");
    let load_time = t.elapsed();
    let slab_after = slab_kib();
    println!("\n## Scale: {n} sandboxes × 3 ports loaded by reconcile in {:.2} s", load_time.as_secs_f64());
    println!(
        "kernel slab growth: {} KiB ({:.0} bytes per sandbox incl. 3 policy entries)",
        slab_after.saturating_sub(slab_before),
        slab_after.saturating_sub(slab_before) as f64 * 1024.0 / n as f64
    );
    // Time the programs against the full maps: re-use the bench object on the dp pins.
    let mut big_ebpf = load_object(&PinDir::new(root.join("dp")), 3).expect("reload on full maps");
    let noop: &mut SchedClassifier = big_ebpf.program_mut(names::PROG_BENCH_NOOP).expect("noop").try_into().expect("tc");
    noop.load().expect("load noop");
    let mid = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + n as u32 / 2).octets();
    let paths: Vec<Path> = standard_paths(mid).into_iter().take(4).collect();
    println!("program cost with {n} sandboxes loaded:");
    print_costs(&program_costs(&mut big_ebpf, &paths, rounds, repeat));
    dp.reconcile(&[]).expect("unload");
}

fn print_costs(costs: &[(String, f64, f64, f64)]) {
    println!("{:<40} {:>10} {:>12} {:>12}", "path", "ns/packet", "× trivial", "spread ns");
    for (name, ns, ratio, spread) in costs {
        println!("{name:<40} {ns:>10.1} {ratio:>12.2} {spread:>12.1}");
    }
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default()
}
