//! `BPF_PROG_TEST_RUN` table tests of the real eBPF object: every verdict and reason of every
//! program, asserting the return code and the per-CPU counters.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    Ebpf,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use gateway::dataplane::{
    bpffs::PinDir,
    load_object,
    maps::{KernelMaps, l4_allow_key, l4_port_key, nr_cpus},
};
use gateway_common::{
    IPPROTO_TCP,
    counters::{Hook, Reason},
    names,
    policy::{
        EdgeConfig, Endpoint, HostAddr, KernelConfig, L4PortStats, PolicyValue, PortKey, SandboxKey, SandboxRecord,
        origin,
    },
    verdict_cases::{
        ALLOWED_SRC, Case, EDGE_RATE, HOST, HOST_ALLOWED, HOST_OTHER, L4_EXPOSED, L4_PORT, L4_PORT_ANY, MARK,
        OTHER_SRC, SBX, SBX2, cases, rate_limit_sequence, syn, syn_from, udp_flow_sequence, unconfigured_cases,
    },
};

const PASS_TC: u32 = -1i32 as u32; // TCX_NEXT
const DROP_TC: u32 = 2; // TC_ACT_SHOT
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// `ifindex` of loopback: `BPF_PROG_TEST_RUN` runs skb programs on it.
const LO: u32 = 1;
/// `BPF_PROG_TEST_RUN` refuses an skb frame shorter than Ethernet + IPv4 headers (EINVAL): the
/// shorter cases of the table run on the host only.
const MIN_SKB_FRAME: usize = 14 + 20;

/// A loaded object with its maps pinned in a private bpffs directory, removed on drop.
struct Loaded {
    ebpf: Ebpf,
    maps: KernelMaps,
    root: PathBuf,
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn load() -> Loaded {
    assert!(nix::unistd::Uid::effective().is_root(), "these tests need root (BPF_PROG_TEST_RUN, bpffs)");
    static N: AtomicU32 = AtomicU32::new(0);
    let root =
        PathBuf::from(format!("/sys/fs/bpf/gwt-verdicts-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
    let pins = PinDir::new(&root);
    let mut ebpf = load_object(&pins, 3).unwrap_or_else(|e| panic!("loading the eBPF object: {e:#}"));
    let noop: &mut SchedClassifier =
        ebpf.program_mut(names::PROG_BENCH_NOOP).expect("noop program").try_into().expect("classifier");
    noop.load().expect("load noop");
    let mut maps = KernelMaps::open(&pins.maps()).expect("open maps");
    maps.config.set(0, KernelConfig { mark: MARK, flags: 0 }, 0).expect("config");
    for (addr, ifindex) in [(SBX, LO), (SBX2, 99)] {
        maps.sandboxes.insert(SandboxKey { addr }, SandboxRecord { ifindex, flags: 0 }, 0).expect("sandbox");
    }
    maps.policy_insert(Endpoint::new(SBX, 3000, IPPROTO_TCP), PolicyValue::gateway(origin::DECLARED, 0))
        .expect("policy");
    maps.protect(Endpoint::new([0; 4], 9901, IPPROTO_TCP)).expect("protected");
    maps.public.insert(PortKey::new(443, IPPROTO_TCP), 1, 0).expect("public");
    for addr in [HOST, HOST_OTHER] {
        maps.host_addrs.insert(HostAddr { addr }, 1, 0).expect("host address");
    }
    maps.host_allow.insert(PortKey::new(HOST_ALLOWED.1, HOST_ALLOWED.0), 1, 0).expect("host allow");
    for (port, allow) in L4_EXPOSED {
        for (net, bits) in allow {
            let net = ipnet::Ipv4Net::new((*net).into(), *bits).expect("prefix");
            maps.l4_allow.insert(&l4_allow_key(port, net), 1, 0).expect("L4 allow-list");
        }
        let zero = aya::maps::PerCpuValues::try_from(vec![L4PortStats::default(); nr_cpus()]).expect("values");
        maps.l4_ports.insert(l4_port_key(port), zero, 0).expect("L4 port");
    }
    Loaded { ebpf, maps, root }
}

/// A `struct __sk_buff` for `ctx_in`: only `mark` (offset 8) and `ifindex` (offset 40) set.
fn skb_ctx(mark: u32, ifindex: u32) -> [u8; 192] {
    let mut ctx = [0u8; 192];
    ctx[8..12].copy_from_slice(&mark.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

fn run_tc(l: &mut Loaded, prog: &str, pkt: &[u8], mark: u32) -> u32 {
    let ctx = skb_ctx(mark, LO);
    let p: &mut SchedClassifier = l.ebpf.program_mut(prog).expect("program").try_into().expect("classifier");
    let mut out = vec![0u8; pkt.len() + 256];
    let opts =
        TestRunOptions { data_in: Some(pkt), data_out: Some(&mut out), ctx_in: Some(&ctx), ..Default::default() };
    p.test_run(opts).unwrap_or_else(|e| panic!("test run of {prog} on {} bytes: {e:?}", pkt.len())).return_value
}

fn run_xdp(l: &mut Loaded, pkt: &[u8]) -> u32 {
    let p: &mut Xdp = l.ebpf.program_mut(names::PROG_EDGE_GUARD).expect("program").try_into().expect("xdp");
    let mut out = vec![0u8; pkt.len() + 256];
    let opts = TestRunOptions { data_in: Some(pkt), data_out: Some(&mut out), ..Default::default() };
    p.test_run(opts).unwrap_or_else(|e| panic!("xdp test run: {e}")).return_value
}

fn counter(l: &Loaded, hook: Hook, reason: Reason) -> u64 {
    l.maps
        .verdict_counters()
        .expect("counters")
        .into_iter()
        .find(|(h, r, _)| *h == hook && *r == reason)
        .map_or(0, |(_, _, n)| n)
}

/// Runs `pkt` through the program of `hook` and checks the action and that exactly the
/// counter of `reason` moved by one.
fn expect(l: &mut Loaded, hook: Hook, pkt: &[u8], mark: u32, reason: Reason, what: &str) {
    let before: Vec<u64> = Reason::ALL.iter().map(|r| counter(l, hook, *r)).collect();
    let ret = match hook {
        Hook::SandboxIn => run_tc(l, names::PROG_SANDBOX_IN, pkt, mark),
        Hook::SandboxOut => run_tc(l, names::PROG_SANDBOX_OUT, pkt, mark),
        Hook::Edge => run_xdp(l, pkt),
    };
    let want = match (hook, reason.is_drop()) {
        (Hook::Edge, true) => XDP_DROP,
        (Hook::Edge, false) => XDP_PASS,
        (_, true) => DROP_TC,
        (_, false) => PASS_TC,
    };
    assert_eq!(ret, want, "{what}: return code (expected {reason:?})");
    for (i, r) in Reason::ALL.iter().enumerate() {
        let delta = counter(l, hook, *r) - before[i];
        let expected = u64::from(*r == reason);
        assert_eq!(delta, expected, "{what}: counter {}/{} moved by {delta}", hook.name(), r.name());
    }
}

/// [`expect`] for a case of the table; false when the kernel cannot run it (a short skb).
fn run_case(l: &mut Loaded, case: &Case) -> bool {
    if case.hook != Hook::Edge && case.packet.len() < MIN_SKB_FRAME {
        return false;
    }
    expect(l, case.hook, &case.packet, case.mark, case.reason, &case.what);
    true
}

#[test]
fn the_verdict_table() {
    let mut l = load();
    let ran = cases().iter().filter(|case| run_case(&mut l, case)).count();
    assert!(ran > 0, "no case ran in the kernel");
}

#[test]
fn udp_replies_follow_flows_the_sandbox_started() {
    let mut l = load();
    for case in udp_flow_sequence() {
        assert!(run_case(&mut l, &case), "{}", case.what);
    }
}

#[test]
fn an_unconfigured_dataplane_drops_every_new_connection() {
    let mut l = load();
    l.maps.config.set(0, KernelConfig { mark: 0, flags: 0 }, 0).expect("config");
    for case in unconfigured_cases() {
        assert!(run_case(&mut l, &case), "{}", case.what);
    }
}

#[test]
fn per_sandbox_counters_move() {
    let mut l = load();
    let key = SandboxKey { addr: SBX };
    let zero = aya::maps::PerCpuValues::try_from(vec![
        gateway_common::policy::SandboxStats::default();
        aya::util::nr_cpus().expect("cpus")
    ])
    .expect("values");
    l.maps.stats.insert(key, zero, 0).expect("stats");
    run_tc(&mut l, names::PROG_SANDBOX_IN, &syn(SBX, 3000), MARK);
    run_tc(&mut l, names::PROG_SANDBOX_IN, &syn(SBX, 3001), MARK);
    run_tc(&mut l, names::PROG_SANDBOX_IN, &syn(SBX, 3001), 0);
    let c = l.maps.sandbox_counters(&key);
    assert_eq!((c.allowed, c.dropped), (0, 2), "drops count per sandbox");
    let entry = l.maps.policy_get(&Endpoint::new(SBX, 3000, IPPROTO_TCP)).expect("entry");
    assert_eq!(entry.admitted, 1, "an admitted connection counts on its policy entry");
    run_tc(&mut l, names::PROG_SANDBOX_IN, &syn(SBX, 8080), MARK);
    assert_eq!(l.maps.sandbox_counters(&key).allowed, 1, "the sandbox API counts per sandbox");
}

#[test]
fn the_rate_limit_drops_after_the_burst() {
    let mut l = load();
    let (syn_rate, syn_burst) = EDGE_RATE;
    l.maps.edge_config.set(0, EdgeConfig { syn_rate, syn_burst, ..Default::default() }, 0).expect("edge config");
    for case in rate_limit_sequence() {
        assert!(run_case(&mut l, &case), "{}", case.what);
    }
    assert_eq!(l.maps.syn_rate.keys().count(), 2, "one bucket per IPv4 source");
}

fn l4_stats(l: &Loaded, port: u16) -> L4PortStats {
    l.maps.l4_stats().into_iter().find(|(p, _)| *p == port).map(|(_, s)| s).expect("an exposed port has counters")
}

#[test]
fn l4_ports_count_their_verdicts() {
    let mut l = load();
    l.maps.edge_config.set(0, EdgeConfig { syn_rate: 1, syn_burst: 3, ..Default::default() }, 0).expect("config");
    assert_eq!(run_xdp(&mut l, &syn_from(ALLOWED_SRC, L4_PORT)), XDP_PASS);
    assert_eq!(run_xdp(&mut l, &syn_from(OTHER_SRC, L4_PORT)), XDP_DROP);
    assert_eq!(run_xdp(&mut l, &syn_from(OTHER_SRC, L4_PORT)), XDP_DROP);
    assert_eq!(
        l4_stats(&l, L4_PORT),
        L4PortStats { syn_pass: 1, drop_not_allowed: 2, drop_rate: 0 },
        "pass and not-allowed count on the port"
    );
    // The drops from outside the allow-list took no token: OTHER_SRC has its whole burst.
    // L4_PORT_ANY passes three times, then is over the rate, on the port; a public port over
    // the rate counts in the verdict counters only; a closed port is dropped as closed.
    for _ in 0..3 {
        assert_eq!(run_xdp(&mut l, &syn_from(OTHER_SRC, L4_PORT_ANY)), XDP_PASS);
    }
    let (rate_before, closed_before) =
        (counter(&l, Hook::Edge, Reason::DropEdgeRate), counter(&l, Hook::Edge, Reason::DropEdgeClosedPort));
    assert_eq!(run_xdp(&mut l, &syn_from(OTHER_SRC, L4_PORT_ANY)), XDP_DROP);
    assert_eq!(run_xdp(&mut l, &syn_from(OTHER_SRC, 443)), XDP_DROP);
    assert_eq!(run_xdp(&mut l, &syn_from(OTHER_SRC, 22)), XDP_DROP);
    assert_eq!(l4_stats(&l, L4_PORT_ANY), L4PortStats { syn_pass: 3, drop_not_allowed: 0, drop_rate: 1 });
    assert_eq!(counter(&l, Hook::Edge, Reason::DropEdgeRate), rate_before + 2);
    assert_eq!(counter(&l, Hook::Edge, Reason::DropEdgeClosedPort), closed_before + 1);
    assert_eq!(l4_stats(&l, L4_PORT).drop_rate, 0, "other ports untouched");
}
