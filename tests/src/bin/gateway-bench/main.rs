//! `cargo xtask bench`: data-plane figures.
//!
//! 1. Program cost: `BPF_PROG_TEST_RUN` ns per packet for each path, beside a trivial program
//!    loaded from the same object, measured in the same run (alternated, median of rounds).
//! 2. Policy updates: `Dataplane::apply_sandbox` latency for one port (median, p99), and per
//!    entry for a sandbox with 1,000 ports (batched syscalls).
//! 3. Program costs and kernel memory with 20,000 (quick) or 100,000 sandboxes × 3 ports loaded.
//! 4. Enforcement cost on veth with trafgen against iptables and nft, and policy updates against
//!    `iptables -A/-D`, `iptables-restore`, `nft add element` ([`veth`]).
//! 5. Scale of a real gateway: RSS per sandbox, start/reconcile, admin call → enforced, route
//!    lookup ([`scale`]).
//!
//! `--quick` keeps it to about a minute (1,000 sandboxes at most in 4 and 5); `--json PATH`
//! writes every figure as JSON (and the veth chart as the same path with `.svg`); `--only a,b` runs some sections (`program`, `updates`, `scale`,
//! `veth`, `gateway`). Runs as root; creates a veth pair `gwbench<pid>`/`…p`, namespaces and
//! private pin directories, all removed at the end (also on panic).

mod chart;
mod scale;
mod stats;
mod veth;

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, process::Command, time::Instant};

use aya::maps::PerCpuValues;
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use gateway::dataplane::{
    Dataplane, DataplaneSettings, PortGrant, SandboxPolicy, XdpModeSetting,
    bpffs::PinDir,
    load_object,
    maps::{KernelMaps, nr_cpus},
};
use gateway_common::{
    IPPROTO_TCP, names,
    policy::{
        EdgeConfig, Endpoint, KernelConfig, L4PortStats, PolicyValue, PortKey, SandboxKey, SandboxRecord, SandboxStats,
        origin,
    },
    testpkt,
};
use serde_json::json;

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

fn is_xdp(prog: &str) -> bool {
    prog == names::PROG_EDGE_GUARD || prog == names::PROG_BENCH_NOOP_XDP
}

fn time_path(ebpf: &mut aya::Ebpf, p: &Path, repeat: u32) -> f64 {
    let mut out = vec![0u8; p.pkt.len() + 256];
    let ctx = skb_ctx(p.mark);
    let opts = TestRunOptions {
        data_in: Some(&p.pkt),
        data_out: Some(&mut out),
        ctx_in: if is_xdp(p.prog) { None } else { Some(&ctx) },
        repeat,
        ..Default::default()
    };
    let prog = ebpf.program_mut(p.prog).expect("program");
    let result = if is_xdp(p.prog) {
        let x: &mut Xdp = prog.try_into().expect("xdp");
        x.test_run(opts)
    } else {
        let c: &mut SchedClassifier = prog.try_into().expect("classifier");
        c.test_run(opts)
    };
    result.expect("test run").duration.as_nanos() as f64
}

use stats::{median, percentile};

/// Removes a directory tree on drop.
pub struct RemoveDir(pub PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn standard_paths(sbx: [u8; 4]) -> Vec<Path> {
    vec![
        Path {
            name: "trivial program (baseline)",
            prog: names::PROG_BENCH_NOOP,
            pkt: tcp(sbx, 3000, true),
            mark: MARK,
        },
        Path { name: "sandbox_in: allowed SYN", prog: names::PROG_SANDBOX_IN, pkt: tcp(sbx, 3000, true), mark: MARK },
        Path {
            name: "sandbox_in: dropped SYN (unmarked)",
            prog: names::PROG_SANDBOX_IN,
            pkt: tcp(sbx, 3000, true),
            mark: 0,
        },
        Path {
            name: "sandbox_in: dropped SYN (closed port)",
            prog: names::PROG_SANDBOX_IN,
            pkt: tcp(sbx, 3001, true),
            mark: MARK,
        },
        Path { name: "sandbox_in: established", prog: names::PROG_SANDBOX_IN, pkt: tcp(sbx, 3000, false), mark: 0 },
        Path { name: "sandbox_in: non-IP (ARP)", prog: names::PROG_SANDBOX_IN, pkt: testpkt::arp(), mark: 0 },
        Path {
            name: "sandbox_out: to the internet",
            prog: names::PROG_SANDBOX_OUT,
            pkt: testpkt::tcp(sbx, [1, 1, 1, 1], 443, true, false),
            mark: 0,
        },
        Path {
            name: "trivial XDP program (edge baseline)",
            prog: names::PROG_BENCH_NOOP_XDP,
            pkt: tcp([198, 18, 0, 1], 22, true),
            mark: 0,
        },
        Path {
            name: "edge_guard: dropped SYN",
            prog: names::PROG_EDGE_GUARD,
            pkt: tcp([198, 18, 0, 1], 22, true),
            mark: 0,
        },
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
    // Each program against the trivial program of its own type (tc or XDP).
    let base = median(&mut samples[0].clone());
    let xdp_base =
        paths.iter().position(|p| p.prog == names::PROG_BENCH_NOOP_XDP).map(|i| median(&mut samples[i].clone()));
    paths
        .iter()
        .zip(samples)
        .map(|(p, mut s)| {
            let min = s.iter().copied().fold(f64::MAX, f64::min);
            let max = s.iter().copied().fold(0.0, f64::max);
            let m = median(&mut s);
            let b = if is_xdp(p.prog) { xdp_base.unwrap_or(base) } else { base };
            (p.name.to_string(), m, m / b, max - min)
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
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args.iter().position(|a| a == "--json").and_then(|i| args.get(i + 1)).map(PathBuf::from);
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.split(',').map(str::to_string).collect());
    // `--summarize PATH`: the targets of an earlier run's JSON, nothing measured.
    if let Some(path) = args.iter().position(|a| a == "--summarize").and_then(|i| args.get(i + 1)) {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("read json")).expect("json");
        print!("{}", targets(v.as_object().expect("object")));
        return;
    }
    let want = |section: &str| only.as_ref().is_none_or(|o| o.iter().any(|s| s == section));
    let (rounds, repeat, updates) = if quick { (9, 100_000, 300) } else { (15, 500_000, 2000) };
    let mut report = serde_json::Map::new();
    report.insert("mode".into(), json!(if quick { "quick" } else { "full" }));
    assert!(nix::unistd::Uid::effective().is_root(), "gateway-bench needs root");
    let ifname = format!("gwbench{}", std::process::id() % 100_000);
    let root = PathBuf::from(format!("/sys/fs/bpf/gwbench-{}", std::process::id()));
    let _cleanup = Cleanup { root: root.clone(), ifname: ifname.clone() };
    let peer = format!("{ifname}p");
    let ok =
        Command::new("ip").args(["link", "add", &ifname, "type", "veth", "peer", "name", &peer]).status().expect("ip");
    assert!(ok.success(), "creating veth {ifname}");
    let _ = Command::new("ip").args(["link", "set", &ifname, "up"]).status();

    println!("# gateway data-plane benchmark ({})", if quick { "quick" } else { "full" });
    println!("machine: {} CPUs, kernel {}", aya::util::nr_cpus().unwrap_or(0), kernel_release());

    // 1. Program cost with a handful of entries.
    if want("program") {
        let pins = PinDir::new(root.join("prog"));
        let mut ebpf = load_object(&pins, 3).expect("load object");
        let noop: &mut SchedClassifier =
            ebpf.program_mut(names::PROG_BENCH_NOOP).expect("noop").try_into().expect("tc");
        noop.load().expect("load noop");
        let noop_xdp: &mut Xdp =
            ebpf.program_mut(names::PROG_BENCH_NOOP_XDP).expect("noop xdp").try_into().expect("xdp");
        noop_xdp.load().expect("load noop xdp");
        let mut maps = KernelMaps::open(&pins.maps()).expect("maps");
        maps.config.set(0, KernelConfig { mark: MARK, flags: 0 }, 0).expect("config");
        maps.sandboxes
            .insert(SandboxKey { addr: [198, 18, 0, 2] }, SandboxRecord { ifindex: 1, flags: 0 }, 0)
            .expect("sbx");
        maps.stats
            .insert(
                SandboxKey { addr: [198, 18, 0, 2] },
                PerCpuValues::try_from(vec![SandboxStats::default(); nr_cpus()]).expect("cpus"),
                0,
            )
            .expect("stats");
        maps.policy_insert(
            Endpoint::new([198, 18, 0, 2], 3000, IPPROTO_TCP),
            PolicyValue::gateway(origin::DECLARED, 0),
        )
        .expect("pol");
        maps.public.insert(PortKey::new(443, IPPROTO_TCP), 1, 0).expect("pub");
        // An exposed L4 port whose allow-list has the bench's client (198.18.0.1).
        maps.l4_ports
            .insert(
                gateway::dataplane::maps::l4_port_key(20001),
                PerCpuValues::try_from(vec![L4PortStats::default(); nr_cpus()]).expect("cpus"),
                0,
            )
            .expect("L4 port");
        maps.l4_allow_insert(20001, "198.18.0.0/24".parse().expect("prefix")).expect("L4 allow-list");
        // The per-source rate limit on (as by default), at a rate no repeat count exhausts: the
        // paths that pass pay for their source's bucket.
        maps.edge_config
            .set(0, EdgeConfig { syn_rate: u32::MAX, syn_burst: u32::MAX, ..Default::default() }, 0)
            .expect("edge config");
        println!("\n## Program cost, BPF_PROG_TEST_RUN, repeat {repeat}, median of {rounds} alternated rounds");
        let mut paths = standard_paths([198, 18, 0, 2]);
        paths.extend([
            Path {
                name: "edge_guard: public port SYN",
                prog: names::PROG_EDGE_GUARD,
                pkt: tcp([198, 18, 0, 1], 443, true),
                mark: 0,
            },
            Path {
                name: "edge_guard: allowed L4 SYN",
                prog: names::PROG_EDGE_GUARD,
                pkt: testpkt::tcp([198, 18, 0, 1], [198, 18, 0, 2], 20001, true, false),
                mark: 0,
            },
            Path {
                name: "edge_guard: L4 SYN outside allowFrom",
                prog: names::PROG_EDGE_GUARD,
                pkt: testpkt::tcp([198, 51, 100, 1], [198, 18, 0, 2], 20001, true, false),
                mark: 0,
            },
        ]);
        let costs = program_costs(&mut ebpf, &paths, rounds, repeat);
        print_costs(&costs);
        report.insert("program_cost".into(), costs_json(&costs));
    }

    // 2. Policy updates through the control plane's Dataplane.
    let settings = DataplaneSettings {
        enabled: true,
        mark: MARK,
        bpffs: root.join("dp"),
        public_interface: None,
        xdp_mode: XdpModeSetting::Skb,
        protected: vec![],
        public_ports: vec![],
        host_allow: vec![],
    };
    if want("updates") || want("scale") {
        let dp = Dataplane::open(&settings).expect("open dataplane");
        let dp_maps = KernelMaps::open(&PinDir::new(root.join("dp")).maps()).expect("dp maps");
        if want("updates") {
            let addr = Ipv4Addr::new(198, 18, 0, 2);
            let policy = |ports: &[u16]| SandboxPolicy {
                address: addr,
                interface: ifname.clone(),
                ports: ports
                    .iter()
                    .map(|p| (*p, PortGrant { origin: origin::DECLARED, preview_refs: 0 }))
                    .collect::<BTreeMap<_, _>>(),
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
            println!(
                "map updates only:        median {:.1} µs, p99 {:.1} µs",
                median(&mut one.clone()),
                percentile(&mut one.clone(), 0.99)
            );
            println!(
                "call → visible in map:   median {:.1} µs, p99 {:.1} µs",
                median(&mut visible.clone()),
                percentile(&mut visible.clone(), 0.99)
            );
            let big: Vec<u16> = (10_000..11_000).collect();
            let mut per_entry = Vec::new();
            for round in 0..rounds {
                dp.apply_sandbox(&policy(&[3000])).expect("reset");
                let shifted: Vec<u16> = big.iter().map(|p| p + (round as u16 % 2) * 2000).collect();
                let took = dp.apply_sandbox(&policy(&shifted)).expect("apply 1000");
                per_entry.push(took.as_nanos() as f64 / 1000.0 / 1000.0);
            }
            println!("1,000 ports in one call: median {:.3} µs per entry (batched)", median(&mut per_entry.clone()));
            dp.remove_sandbox(addr).expect("remove");
            report.insert(
                "policy_update".into(),
                json!({
                    "updates": updates,
                    "map_updates_us": {"median": median(&mut one.clone()), "p99": percentile(&mut one, 0.99)},
                    "call_to_visible_us": {"median": median(&mut visible.clone()), "p99": percentile(&mut visible, 0.99)},
                    "batch_us_per_entry": median(&mut per_entry),
                }),
            );
        }

        // 3. Program costs with many sandboxes loaded.
        if want("scale") {
            let n = if quick { 20_000 } else { 100_000 };
            let slab_before = slab_kib();
            let all = veth::policies(n, &ifname);
            let t = Instant::now();
            dp.reconcile(&all).expect("reconcile");
            let load_time = t.elapsed();
            let slab_after = slab_kib();
            println!("\n## Scale: {n} sandboxes × 3 ports loaded by reconcile in {:.2} s", load_time.as_secs_f64());
            let slab = slab_after.saturating_sub(slab_before);
            println!(
                "kernel slab growth: {slab} KiB ({:.0} bytes per sandbox incl. 3 policy entries)",
                slab as f64 * 1024.0 / n as f64
            );
            // Time the programs against the full maps: re-use the bench object on the dp pins.
            let mut big_ebpf = load_object(&PinDir::new(root.join("dp")), 3).expect("reload on full maps");
            let noop: &mut SchedClassifier =
                big_ebpf.program_mut(names::PROG_BENCH_NOOP).expect("noop").try_into().expect("tc");
            noop.load().expect("load noop");
            let mid = veth::sandbox_addr(n / 2).octets();
            let paths: Vec<Path> = standard_paths(mid).into_iter().take(4).collect();
            println!("program cost with {n} sandboxes loaded:");
            let costs = program_costs(&mut big_ebpf, &paths, rounds, repeat);
            print_costs(&costs);
            dp.reconcile(&[]).expect("unload");
            report.insert(
                "program_cost_loaded".into(),
                json!({"sandboxes": n, "reconcile_seconds": load_time.as_secs_f64(), "slab_kib": slab, "paths": costs_json(&costs)}),
            );
        }
    }

    // 4. Enforcement on veth (trafgen) and updates against iptables / nft.
    if want("veth") {
        let opts = veth::Options {
            levels: if quick { vec![10, 1_000] } else { vec![10, 1_000, 100_000] },
            rounds: if quick { 3 } else { 5 },
            secs: if quick { 0.7 } else { 2.0 },
            update_reps: if quick { 5 } else { 11 },
        };
        let (text, j) = veth::run(&opts);
        print!("{text}");
        if let Some(path) = &json_path {
            let _ = std::fs::write(path.with_extension("svg"), chart::veth_svg(&j));
        }
        report.insert("veth".into(), j);
    }

    // 5. A real gateway at scale.
    if want("gateway") {
        let n = if quick { 1_000 } else { 100_000 };
        let (text, j) = scale::run(n, &ifname);
        print!("{text}");
        report.insert("gateway_scale".into(), j);
    }

    let summary = targets(&report);
    print!("{summary}");

    if let Some(path) = json_path {
        std::fs::write(&path, serde_json::to_string_pretty(&serde_json::Value::Object(report)).expect("json"))
            .expect("write json");
    }
}

/// The targets (BENCHMARKS.md) against this run's figures.
fn targets(r: &serde_json::Map<String, serde_json::Value>) -> String {
    use std::fmt::Write as _;
    let met = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut s = String::from("\n## Targets\n");
    if let Some(paths) = r.get("program_cost").and_then(|v| v.as_array()) {
        for p in paths.iter().filter(|p| !p["path"].as_str().unwrap_or("").starts_with("trivial")) {
            let x = p["x_trivial"].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                s,
                "- program cost ≤ 2× trivial, {}: {x:.2}× ({})",
                p["path"].as_str().unwrap_or(""),
                met(x <= 2.0)
            );
        }
        let _ = writeln!(
            s,
            "  (a hash-map lookup costs about as much as the trivial program here; paths needing one or two of them cannot reach 2×: see docs/ARCHITECTURE.md, \"A packet\")"
        );
    }
    if let Some(flood) = r.get("veth").and_then(|v| v["flood"].as_array()) {
        let recv = |g: &serde_json::Value, lane: &str| {
            g["lanes"]
                .as_array()
                .and_then(|ls| ls.iter().find(|l| l["lane"] == lane))
                .and_then(|l| l["receive_ns"].as_f64())
                .unwrap_or(f64::NAN)
        };
        if let Some(g) = flood.iter().find(|g| g["sandboxes"] == 1000) {
            let x = recv(g, "tcx") / recv(g, "iptables");
            let _ = writeln!(s, "- veth receive cost ≤ 0.5× iptables at 1,000 sandboxes: {x:.2}× ({})", met(x <= 0.5));
        }
        if let (Some(first), Some(last)) = (flood.first(), flood.last()) {
            let x = recv(last, "tcx") / recv(first, "tcx");
            let _ = writeln!(
                s,
                "- flat from {} to {} sandboxes: tcx receive cost {:.0} → {:.0} ns ({x:.2}×; {}: at most +25 %)",
                first["sandboxes"],
                last["sandboxes"],
                recv(first, "tcx"),
                recv(last, "tcx"),
                met(x <= 1.25)
            );
        }
    }
    if let Some(ups) = r.get("veth").and_then(|v| v["updates"].as_array()) {
        for u in ups {
            let call = u["gateway_call_to_visible_us"]["median"].as_f64().unwrap_or(f64::NAN);
            let batch = u["gateway_batch_us_per_entry"].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                s,
                "- policy update at {} sandboxes: call → enforced {call:.1} µs (≤ 100: {}), batched {batch:.2} µs/entry (≤ 1: {})",
                u["sandboxes"],
                met(call <= 100.0),
                met(batch <= 1.0)
            );
        }
    }
    if let Some(g) = r.get("gateway_scale") {
        let b = g["rss_bytes_per_sandbox"].as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            s,
            "- gateway memory ≤ 2 KiB per sandbox at {} sandboxes: {b:.0} bytes ({})",
            g["sandboxes"],
            met(b <= 2048.0)
        );
        let _ = writeln!(
            s,
            "  (the admin API acknowledges a change after the file store's fsyncs: its latency is the disk's, the data-plane part is the call → enforced figure above)"
        );
    }
    s
}

fn costs_json(costs: &[(String, f64, f64, f64)]) -> serde_json::Value {
    costs
        .iter()
        .map(|(name, ns, ratio, spread)| json!({"path": name, "ns": ns, "x_trivial": ratio, "spread_ns": spread}))
        .collect()
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
