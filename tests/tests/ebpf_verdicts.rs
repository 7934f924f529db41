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
use gateway::dataplane::{bpffs::PinDir, load_object, maps::KernelMaps};
use gateway_common::{
    IPPROTO_TCP,
    counters::{Hook, Reason},
    names,
    policy::{DataplaneConfig, Endpoint, PolicyValue, PortKey, SandboxKey, SandboxRecord, origin},
    testpkt::{arp, icmp, tcp, tcp6, udp, udp6, vlan_tagged, with_ip_options},
};

const MARK: u32 = 0x6777;
const SBX: [u8; 4] = [198, 18, 0, 2];
const SBX2: [u8; 4] = [198, 18, 1, 2];
const HOST: [u8; 4] = [198, 18, 0, 1];
const PASS_TC: u32 = -1i32 as u32; // TCX_NEXT
const DROP_TC: u32 = 2; // TC_ACT_SHOT
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// `ifindex` of loopback: `BPF_PROG_TEST_RUN` runs skb programs on it.
const LO: u32 = 1;

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
    maps.config.set(0, DataplaneConfig { mark: MARK, flags: 0 }, 0).expect("config");
    for (addr, ifindex) in [(SBX, LO), (SBX2, 99)] {
        maps.sandboxes.insert(SandboxKey { addr }, SandboxRecord { ifindex, flags: 0 }, 0).expect("sandbox");
    }
    maps.policy_insert(Endpoint::new(SBX, 3000, IPPROTO_TCP), PolicyValue::gateway(origin::DECLARED, 0))
        .expect("policy");
    maps.protect(Endpoint::new([0; 4], 9901, IPPROTO_TCP)).expect("protected");
    maps.public.insert(PortKey::new(443, IPPROTO_TCP), 1, 0).expect("public");
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

fn syn(dst: [u8; 4], dport: u16) -> Vec<u8> {
    tcp(HOST, dst, dport, true, false)
}

#[test]
fn sandbox_in_verdicts() {
    let mut l = load();
    let h = Hook::SandboxIn;
    let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
        ("declared port from the gateway", syn(SBX, 3000), MARK, Reason::PassAllowed),
        ("declared port, unmarked", syn(SBX, 3000), 0, Reason::DropNotFromGateway),
        ("declared port, wrong mark", syn(SBX, 3000), MARK ^ 1, Reason::DropNotFromGateway),
        ("undeclared port from the gateway", syn(SBX, 3001), MARK, Reason::DropPortClosed),
        ("sandbox API 8080 from the gateway", syn(SBX, 8080), MARK, Reason::PassSandboxApi),
        ("system port 80 from the gateway", syn(SBX, 80), MARK, Reason::PassSandboxApi),
        ("8080 unmarked", syn(SBX, 8080), 0, Reason::DropNotFromGateway),
        ("80 unmarked", syn(SBX, 80), 0, Reason::DropNotFromGateway),
        ("443 from the gateway", syn(SBX, 443), MARK, Reason::DropReservedPort),
        ("443 unmarked", syn(SBX, 443), 0, Reason::DropReservedPort),
        ("unknown sandbox", syn([198, 18, 9, 9], 3000), MARK, Reason::DropUnknownSandbox),
        ("established (ACK)", tcp(HOST, SBX, 3001, false, true), 0, Reason::PassEstablished),
        ("SYN+ACK", tcp(HOST, SBX, 3001, true, true), 0, Reason::PassEstablished),
        ("new UDP", udp([8, 8, 8, 8], SBX, 53, 5353), MARK, Reason::DropUdp),
        ("IP options followed (allowed port)", with_ip_options(&syn(SBX, 3000)), MARK, Reason::PassAllowed),
        ("IP options followed (closed port)", with_ip_options(&syn(SBX, 3001)), MARK, Reason::DropPortClosed),
        ("VLAN tag followed (allowed)", vlan_tagged(&syn(SBX, 3000)), MARK, Reason::PassAllowed),
        ("VLAN tag followed (unmarked)", vlan_tagged(&syn(SBX, 3000)), 0, Reason::DropNotFromGateway),
    ];
    for (what, pkt, mark, reason) in cases {
        expect(&mut l, h, &pkt, mark, reason, what);
    }
    expect(&mut l, h, &icmp(HOST, SBX), 0, Reason::PassIcmp, "ICMP echo");
    expect(&mut l, h, &arp(), 0, Reason::PassNonIp, "ARP");
    expect(&mut l, h, &tcp6(3000, true), MARK, Reason::DropIpv6, "IPv6 SYN");
    expect(&mut l, h, &udp6(3000), MARK, Reason::DropIpv6, "IPv6 UDP");
    expect(&mut l, h, &tcp6(3000, false), 0, Reason::PassEstablished, "IPv6 established");
}

#[test]
fn sandbox_in_fails_closed_on_truncated_and_malformed_headers() {
    let mut l = load();
    let full = syn(SBX, 3000);
    // BPF_PROG_TEST_RUN refuses an IPv4 frame shorter than Ethernet + IPv4 headers (EINVAL),
    // so kernel cuts start at 34; the host tests of `gateway-common` cover the shorter ones.
    for cut in [34, 40, 47] {
        expect(&mut l, Hook::SandboxIn, &full[..cut], MARK, Reason::DropMalformed, &format!("cut at {cut} bytes"));
    }
    let mut bad_version = full.clone();
    bad_version[14] = 0x65;
    expect(&mut l, Hook::SandboxIn, &bad_version, MARK, Reason::DropMalformed, "IP version 6 in an IPv4 frame");
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x43;
    expect(&mut l, Hook::SandboxIn, &bad_ihl, MARK, Reason::DropMalformed, "IHL 3");
    let mut big_ihl = full.clone();
    big_ihl[14] = 0x4f;
    expect(&mut l, Hook::SandboxIn, &big_ihl, MARK, Reason::DropMalformed, "IHL 15 past the end");
    let mut bad_doff = full.clone();
    bad_doff[14 + 20 + 12] = 0x20;
    expect(&mut l, Hook::SandboxIn, &bad_doff, MARK, Reason::DropMalformed, "TCP data offset 2");
}

#[test]
fn an_unconfigured_dataplane_drops_every_new_connection() {
    let mut l = load();
    l.maps.config.set(0, DataplaneConfig { mark: 0, flags: 0 }, 0).expect("config");
    expect(&mut l, Hook::SandboxIn, &syn(SBX, 3000), 0, Reason::DropNotFromGateway, "mark 0, unmarked");
    expect(&mut l, Hook::SandboxIn, &syn(SBX, 8080), 0, Reason::DropNotFromGateway, "mark 0, 8080");
}

#[test]
fn sandbox_out_verdicts() {
    let mut l = load();
    let h = Hook::SandboxOut;
    expect(&mut l, h, &tcp(SBX, [1, 1, 1, 1], 443, true, false), 0, Reason::PassOut, "to the internet");
    expect(&mut l, h, &tcp(SBX, SBX2, 3000, true, false), 0, Reason::DropSandboxToSandbox, "to another sandbox");
    expect(
        &mut l,
        h,
        &tcp(SBX, SBX2, 3000, false, true),
        0,
        Reason::DropSandboxToSandbox,
        "established to another sandbox",
    );
    expect(&mut l, h, &tcp(SBX, HOST, 9901, true, false), 0, Reason::DropProtected, "to the admin API");
    expect(&mut l, h, &tcp(SBX, HOST, 9902, true, false), 0, Reason::PassOut, "to another host port");
    expect(&mut l, h, &tcp(SBX2, [1, 1, 1, 1], 443, true, false), 0, Reason::DropSpoofed, "spoofing another sandbox");
    expect(&mut l, h, &tcp(SBX, [1, 1, 1, 1], 443, true, false)[..40], 0, Reason::DropMalformed, "truncated TCP");
    expect(&mut l, h, &arp(), 0, Reason::PassNonIp, "ARP");
}

#[test]
fn udp_replies_follow_flows_the_sandbox_started() {
    let mut l = load();
    expect(&mut l, Hook::SandboxIn, &udp([9, 9, 9, 9], SBX, 53, 5353), 0, Reason::DropUdp, "before the query");
    expect(&mut l, Hook::SandboxOut, &udp(SBX, [9, 9, 9, 9], 5353, 53), 0, Reason::PassOut, "the query");
    expect(&mut l, Hook::SandboxIn, &udp([9, 9, 9, 9], SBX, 53, 5353), 0, Reason::PassUdpReply, "the reply");
    expect(&mut l, Hook::SandboxIn, &udp([9, 9, 9, 9], SBX, 54, 5353), 0, Reason::DropUdp, "other source port");
}

#[test]
fn edge_guard_verdicts() {
    let mut l = load();
    let h = Hook::Edge;
    expect(&mut l, h, &syn(HOST, 443), 0, Reason::PassEdgePublic, "public port");
    expect(&mut l, h, &syn(HOST, 22), 0, Reason::DropEdgeClosedPort, "closed port");
    expect(&mut l, h, &vlan_tagged(&syn(HOST, 22)), 0, Reason::DropEdgeClosedPort, "closed port, VLAN");
    expect(&mut l, h, &with_ip_options(&syn(HOST, 443)), 0, Reason::PassEdgePublic, "public port, IP options");
    expect(&mut l, h, &tcp(HOST, HOST, 22, false, true), 0, Reason::PassEdgeOther, "established");
    expect(&mut l, h, &udp(HOST, HOST, 1, 22), 0, Reason::PassEdgeOther, "UDP");
    expect(&mut l, h, &syn(HOST, 22)[..30], 0, Reason::PassEdgeMalformed, "truncated");
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
