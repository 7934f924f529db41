//! Host tests of the decision logic with packets built by etherparse: the verdict table of
//! [`crate::verdict_cases`] (which the kernel object runs too), and what only the host can see.

use super::*;
use crate::counters::Hook;
use crate::parse::{Packet, parse};
use crate::policy::{PolicyValue, origin};
use crate::testpkt::udp;
use crate::verdict_cases::{
    Case, HOST, HOST_ALLOWED, HOST_OTHER, MARK, SBX, SBX2, cases, syn, udp_flow_sequence, unconfigured_cases,
};
use std::collections::{HashMap, HashSet};

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
