//! Host tests of the decision logic with packets built by etherparse: the verdict table of
//! [`crate::verdict_cases`] (which the kernel object runs too), and what only the host can see.

use super::*;
use crate::counters::Hook;
use crate::parse::{Packet, parse};
use crate::policy::{PolicyValue, SYN_TOKEN, SynBucket, origin};
use crate::testpkt::udp;
use crate::verdict_cases::{
    ALLOWED_SRC, Case, EDGE_RATE, HOST, HOST_ALLOWED, HOST_OTHER, L4_EXPOSED, L4_PORT, L4_PORT_ANY, MARK, OTHER_SRC,
    SBX, SBX2, cases, rate_limit_sequence, syn, syn_from, udp_flow_sequence, unconfigured_cases,
};
use core::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::vec::Vec;

/// The interface of [`SBX`] in these maps.
const SBX_IFINDEX: u32 = 7;

#[derive(Default)]
struct Maps {
    mark: u32,
    sandboxes: HashMap<[u8; 4], SandboxRecord>,
    policy: HashMap<Endpoint, PolicyValue>,
    protected: HashSet<Endpoint>,
    public: HashSet<PortKey>,
    udp: HashSet<UdpFlowKey>,
    host_addrs: HashSet<[u8; 4]>,
    host_allow: HashSet<PortKey>,
    /// `MAP_L4_PORTS`.
    l4_ports: HashSet<u16>,
    /// `MAP_L4_ALLOW`: (port, prefix, CIDR length).
    l4_allow: Vec<(u16, [u8; 4], u8)>,
    /// `EdgeConfig`'s (syn_rate, syn_burst).
    rate: (u32, u32),
    /// `MAP_SYN_RATE`, and the clock the kernel's buckets would read.
    buckets: RefCell<HashMap<[u8; 4], SynBucket>>,
    now_ns: u64,
}

impl Lookups for Maps {
    fn gateway_mark(&self) -> u32 {
        self.mark
    }
    fn sandbox(&self, addr: [u8; 4]) -> SandboxLookup {
        self.sandboxes.get(&addr).map_or(SandboxLookup::MISS, |r| SandboxLookup::hit(*r))
    }
    fn policy_admit(&self, key: &Endpoint) -> u8 {
        self.policy.get(key).map_or(0, |v| v.allow_from)
    }
    fn protected(&self, key: &Endpoint) -> bool {
        self.protected.contains(key)
    }
    /// The kernel's prefilter, built from the same set the way userspace writes it.
    fn protected_port(&self, port: u16, proto: u8) -> bool {
        let mut bits = crate::policy::PortBits::default();
        for k in self
            .protected
            .iter()
            .filter(|k| crate::policy::PortBits::slot(k.port()) == crate::policy::PortBits::slot(port))
        {
            bits.set(k.port(), k.proto);
        }
        bits.has(port, proto)
    }
    fn public_port(&self, key: &PortKey) -> bool {
        self.public.contains(key)
    }
    fn udp_flow(&self, key: &UdpFlowKey) -> bool {
        self.udp.contains(key)
    }
    fn host_addr(&self, addr: [u8; 4]) -> bool {
        self.host_addrs.contains(&addr)
    }
    fn host_allowed(&self, key: &PortKey) -> bool {
        self.host_allow.contains(key)
    }
    /// What the kernel does: the source's bucket, full when new.
    fn syn_admit(&self, src: [u8; 4]) -> bool {
        let (rate, burst) = self.rate;
        if rate == 0 {
            return true;
        }
        let mut buckets = self.buckets.borrow_mut();
        let bucket = buckets.entry(src).or_insert_with(|| SynBucket::full(burst, self.now_ns));
        syn_admit(bucket, self.now_ns, rate, burst)
    }
    fn l4_port(&self, port: u16) -> bool {
        self.l4_ports.contains(&port)
    }
    /// A longest-prefix match over (port, address), the way the trie's keys are laid out.
    fn l4_allowed(&self, port: u16, src: [u8; 4]) -> bool {
        self.l4_allow.iter().any(|(p, net, bits)| {
            let mask = if *bits == 0 { 0 } else { u32::MAX << (32 - u32::from(*bits)) };
            *p == port && u32::from_be_bytes(src) & mask == u32::from_be_bytes(*net) & mask
        })
    }
}

fn maps() -> Maps {
    let mut m = Maps { mark: MARK, ..Default::default() };
    m.sandboxes.insert(SBX, SandboxRecord { ifindex: SBX_IFINDEX, flags: 0 });
    m.sandboxes.insert(SBX2, SandboxRecord { ifindex: 8, flags: 0 });
    m.policy.insert(Endpoint::new(SBX, 3000, IPPROTO_TCP), PolicyValue::gateway(origin::DECLARED, 0));
    m.protected.insert(Endpoint::new([0; 4], 9901, IPPROTO_TCP));
    m.public.insert(PortKey::new(443, IPPROTO_TCP));
    m.host_addrs.extend([HOST, HOST_OTHER]);
    m.host_allow.insert(PortKey::new(HOST_ALLOWED.1, HOST_ALLOWED.0));
    for (port, allow) in L4_EXPOSED {
        m.l4_ports.insert(port);
        m.l4_allow.extend(allow.iter().map(|(net, bits)| (port, *net, *bits)));
    }
    m.now_ns = 5_000_000_000;
    m
}

/// What the program of `case.hook` decides, remembering a UDP flow the way `sandbox_out` does.
fn judge(case: &Case, m: &mut Maps) -> Reason {
    let pkt = parse(&case.packet[..]);
    match case.hook {
        Hook::SandboxIn => into_sandbox(pkt, case.mark, m).reason,
        Hook::SandboxOut => {
            let v = out_of_sandbox(pkt, SBX_IFINDEX, m);
            if v.remember_udp {
                m.udp.insert(v.udp_flow);
            }
            v.reason
        }
        Hook::Edge => edge_guard(pkt, m).reason,
    }
}

#[test]
fn the_verdict_table() {
    for case in cases() {
        assert_eq!(judge(&case, &mut maps()), case.reason, "{}", case.what);
    }
}

#[test]
fn the_rate_limit_drops_after_the_burst() {
    let mut m = maps();
    m.rate = EDGE_RATE;
    for case in rate_limit_sequence() {
        assert_eq!(judge(&case, &mut m), case.reason, "{}", case.what);
    }
    // A second later the bucket holds one connection again (rate 1/s).
    m.now_ns += 1_000_000_000;
    assert_eq!(judge_edge(&syn_from(ALLOWED_SRC, 443), &m).reason, Reason::PassEdgePublic);
    assert_eq!(judge_edge(&syn_from(ALLOWED_SRC, 443), &m).reason, Reason::DropEdgeRate);
}

fn judge_edge(packet: &[u8], m: &Maps) -> Verdict {
    edge_guard(parse(packet), m)
}

#[test]
fn l4_verdicts_carry_the_port_to_count_on() {
    let m = maps();
    let pass = judge_edge(&syn_from(ALLOWED_SRC, L4_PORT), &m);
    assert_eq!((pass.reason, pass.l4_port), (Reason::PassEdgeL4, L4_PORT));
    let drop = judge_edge(&syn_from(OTHER_SRC, L4_PORT), &m);
    assert_eq!((drop.reason, drop.l4_port), (Reason::DropEdgeNotAllowed, L4_PORT));
    let public = judge_edge(&syn_from(ALLOWED_SRC, 443), &m);
    assert_eq!((public.reason, public.l4_port), (Reason::PassEdgePublic, 0));
    let closed = judge_edge(&syn_from(ALLOWED_SRC, 22), &m);
    assert_eq!((closed.reason, closed.l4_port), (Reason::DropEdgeClosedPort, 0));
    assert!(!pass.for_sandbox && !drop.for_sandbox, "nothing counts per sandbox at the edge");

    // A rate drop carries its port: the kernel counts it on the port if that is exposed.
    let mut m = maps();
    m.rate = (1, 1);
    assert_eq!(judge_edge(&syn_from(OTHER_SRC, L4_PORT_ANY), &m).reason, Reason::PassEdgeL4);
    let rate = judge_edge(&syn_from(OTHER_SRC, L4_PORT_ANY), &m);
    assert_eq!((rate.reason, rate.l4_port), (Reason::DropEdgeRate, L4_PORT_ANY));
    let rate = judge_edge(&syn_from(OTHER_SRC, 443), &m);
    assert_eq!((rate.reason, rate.l4_port), (Reason::DropEdgeRate, 443));
}

#[test]
fn a_public_port_wins_over_an_l4_exposure_of_the_same_port() {
    let mut m = maps();
    m.l4_ports.insert(443);
    assert_eq!(judge_edge(&syn_from(OTHER_SRC, 443), &m).reason, Reason::PassEdgePublic);
}

#[test]
fn no_rate_limit_by_default() {
    let m = maps();
    for _ in 0..1000 {
        assert_eq!(judge_edge(&syn_from(ALLOWED_SRC, 443), &m).reason, Reason::PassEdgePublic);
    }
    assert!(m.buckets.borrow().is_empty(), "no bucket without a rate");
}

const SEC: u64 = 1_000_000_000;

/// Admits `n` times at `now`, returning how many passed.
fn admit_n(b: &mut SynBucket, now: u64, rate: u32, burst: u32, n: u32) -> u32 {
    (0..n).filter(|_| syn_admit(b, now, rate, burst)).count() as u32
}

#[test]
fn syn_admit_starts_full_and_refills_at_the_rate() {
    let mut b = SynBucket::full(5, 10 * SEC);
    assert_eq!(admit_n(&mut b, 10 * SEC, 2, 5, 50), 5, "the burst, then nothing");
    // 2 per second: half a second is one connection, and a fraction carries over.
    assert_eq!(admit_n(&mut b, 10 * SEC + SEC / 2, 2, 5, 10), 1);
    assert_eq!(admit_n(&mut b, 10 * SEC + SEC / 2 + SEC / 4, 2, 5, 10), 0);
    assert_eq!(admit_n(&mut b, 11 * SEC, 2, 5, 10), 1, "the quarter seconds add up");
    // Refill is capped at the burst.
    assert_eq!(admit_n(&mut b, 1000 * SEC, 2, 5, 50), 5);
}

#[test]
fn syn_admit_rate_zero_is_no_limit() {
    let mut b = SynBucket::default();
    assert_eq!(admit_n(&mut b, 0, 0, 0, 10_000), 10_000);
    assert_eq!(b, SynBucket::default(), "the bucket is not touched");
}

#[test]
fn syn_admit_burst_zero_still_admits_one() {
    let mut b = SynBucket::full(0, SEC);
    assert_eq!(admit_n(&mut b, SEC, 1, 0, 10), 1);
    assert_eq!(admit_n(&mut b, 2 * SEC, 1, 0, 10), 1);
}

#[test]
fn syn_admit_survives_a_clock_going_backwards() {
    let mut b = SynBucket::full(3, 100 * SEC);
    assert_eq!(admit_n(&mut b, 100 * SEC, 1, 3, 3), 3);
    assert_eq!(admit_n(&mut b, 50 * SEC, 1, 3, 3), 0, "earlier: no refill, no wrap");
    assert_eq!(b.last_ns, 100 * SEC, "the later time is kept");
    assert_eq!(admit_n(&mut b, 0, 1, 3, 3), 0);
    assert_eq!(admit_n(&mut b, 101 * SEC, 1, 3, 3), 1, "one second after the real last refill");
}

#[test]
fn syn_admit_never_overflows() {
    let extremes =
        [0, 1, 2, SEC - 1, SEC, u64::from(u32::MAX), 1 << 32, (1 << 32) + 1, u64::MAX / 2, u64::MAX - 1, u64::MAX];
    let rates = [0, 1, 2, 1000, u32::MAX - 1, u32::MAX];
    for &last in &extremes {
        for &tokens in &extremes {
            for &now in &extremes {
                for &rate in &rates {
                    for &burst in &rates {
                        let mut b = SynBucket { tokens, last_ns: last };
                        let admitted = syn_admit(&mut b, now, rate, burst);
                        if rate != 0 {
                            assert!(b.tokens <= SynBucket::capacity(burst), "{tokens} {last} {now} {rate} {burst}");
                            assert!(b.last_ns >= last.min(now));
                            if now > last && tokens >= SYN_TOKEN {
                                assert!(admitted, "a refill never loses tokens");
                            }
                        }
                    }
                }
            }
        }
    }
    // The largest bucket, refilled from empty over the longest time, at the highest rate.
    let mut b = SynBucket { tokens: 0, last_ns: 0 };
    assert!(syn_admit(&mut b, u64::MAX, u32::MAX, u32::MAX));
    assert_eq!(b.tokens, SynBucket::capacity(u32::MAX) - SYN_TOKEN);
}

#[test]
fn saturating_multiplication_is_exact_below_the_limit() {
    for (a, b) in [(0u64, 0u32), (1, 1), (u64::from(u32::MAX), u32::MAX), (1 << 32, 7), ((1 << 40) + 3, 1 << 20)] {
        let exact = u128::from(a) * u128::from(b);
        let want = u64::try_from(exact).unwrap_or(u64::MAX);
        assert_eq!(super::mul_saturating(a, b), want, "{a} * {b}");
    }
    assert_eq!(super::mul_saturating(u64::MAX, 2), u64::MAX);
    assert_eq!(super::mul_saturating(1 << 40, 1 << 24), u64::MAX);
    assert_eq!(super::mul_saturating((1 << 40) - 1, 1 << 24), ((1 << 40) - 1) << 24);
}

#[test]
fn udp_replies_follow_flows_the_sandbox_started() {
    let mut m = maps();
    for case in udp_flow_sequence() {
        assert_eq!(judge(&case, &mut m), case.reason, "{}", case.what);
    }
}

#[test]
fn an_unconfigured_dataplane_fails_closed() {
    let mut m = maps();
    m.mark = 0;
    for case in unconfigured_cases() {
        assert_eq!(judge(&case, &mut m), case.reason, "{}", case.what);
    }
}

#[test]
fn drops_count_per_sandbox_and_admissions_per_policy_entry() {
    let m = maps();
    let v = into_sandbox(parse(&syn(SBX, 3001)[..]), MARK, &m);
    assert!(v.for_sandbox, "a drop is counted per sandbox");
    assert_eq!(v.sandbox, SBX);
    let v = into_sandbox(parse(&syn(SBX, 3000)[..]), MARK, &m);
    assert!(!v.for_sandbox, "an admitted connection is counted on its policy entry");
}

#[test]
fn a_udp_query_out_is_remembered() {
    let out = out_of_sandbox(parse(&udp(SBX, [8, 8, 8, 8], 5353, 53)[..]), SBX_IFINDEX, &maps());
    assert_eq!(out.reason, Reason::PassOut);
    assert!(out.remember_udp);
}

#[test]
fn a_query_to_an_allowed_host_port_is_remembered_and_answered() {
    let mut m = maps();
    let out = out_of_sandbox(parse(&udp(SBX, HOST, 5353, 53)[..]), SBX_IFINDEX, &m);
    assert_eq!(out.reason, Reason::PassHostAllowed);
    assert!(out.remember_udp);
    m.udp.insert(out.udp_flow);
    assert_eq!(into_sandbox(parse(&udp(HOST, SBX, 53, 5353)[..]), 0, &m).reason, Reason::PassUdpReply);
}

#[test]
fn the_host_allow_list_does_not_open_protected_sockets() {
    let mut m = maps();
    m.host_allow.insert(PortKey::new(9901, IPPROTO_TCP));
    let to_admin = crate::testpkt::tcp(SBX, HOST, 9901, true, false);
    assert_eq!(out_of_sandbox(parse(&to_admin[..]), SBX_IFINDEX, &m).reason, Reason::DropProtected);
}

#[test]
fn the_slice_accessor_is_bounds_checked() {
    let data = [1u8, 2, 3];
    let h = data[..].header::<2>(1).expect("in bounds");
    assert_eq!((h.pair::<0>(), h.u8::<1>(), h.be16::<0>()), ([2, 3], 3, 0x0203));
    assert!(data[..].header::<2>(2).is_err());
    assert!(data[..].header::<4>(0).is_err());
    assert!(data[..].header::<1>(usize::MAX).is_err());
}

#[test]
fn protected_port_bits_match_exact_keys_only() {
    use crate::policy::PortBits;
    let mut b = PortBits::default();
    b.set(9901, IPPROTO_TCP);
    b.set(9902, IPPROTO_UDP);
    assert!(b.has(9901, IPPROTO_TCP));
    assert!(!b.has(9901, IPPROTO_UDP));
    assert!(b.has(9902, IPPROTO_UDP));
    assert!(!b.has(9903, IPPROTO_TCP));
    assert!(!b.has(9901, crate::IPPROTO_ICMP));
    assert_eq!(PortBits::slot(9901), 9901 / 64);
    assert_eq!(PortBits::slot(u16::MAX), 1023);
}
