//! Host tests of the decision logic with packets built by etherparse.

use super::*;
use crate::parse::{Packet, parse};
use crate::policy::{PolicyValue, origin};
use crate::testpkt::{arp, icmp, tcp, tcp6, udp, udp6, vlan_tagged, with_ip_options};
use std::collections::{HashMap, HashSet};
use std::vec::Vec;

const GW: u32 = 0x6777;
const SBX: [u8; 4] = [198, 18, 0, 2];
const SBX2: [u8; 4] = [198, 18, 1, 2];
const HOST: [u8; 4] = [198, 18, 0, 1];

#[derive(Default)]
struct Maps {
    mark: u32,
    sandboxes: HashMap<[u8; 4], SandboxRecord>,
    policy: HashMap<Endpoint, PolicyValue>,
    protected: HashSet<Endpoint>,
    public: HashSet<PortKey>,
    udp: HashSet<UdpFlowKey>,
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
}

fn maps() -> Maps {
    let mut m = Maps { mark: GW, ..Default::default() };
    m.sandboxes.insert(SBX, SandboxRecord { ifindex: 7, flags: 0 });
    m.sandboxes.insert(SBX2, SandboxRecord { ifindex: 8, flags: 0 });
    m.policy.insert(Endpoint::new(SBX, 3000, IPPROTO_TCP), PolicyValue::gateway(origin::DECLARED, 0));
    m.protected.insert(Endpoint::new([0; 4], 9901, IPPROTO_TCP));
    m.public.insert(PortKey::new(443, IPPROTO_TCP));
    m
}

fn syn(dst: [u8; 4], dport: u16) -> Vec<u8> {
    tcp(HOST, dst, dport, true, false)
}

fn into(pkt: &[u8], mark: u32, m: &Maps) -> Reason {
    into_sandbox(parse(pkt), mark, m).reason
}

#[test]
fn new_tcp_into_a_sandbox_needs_the_mark_and_the_policy() {
    let m = maps();
    assert_eq!(into(&syn(SBX, 3000), GW, &m), Reason::PassAllowed);
    assert_eq!(into(&syn(SBX, 3000), 0, &m), Reason::DropNotFromGateway);
    assert_eq!(into(&syn(SBX, 3000), GW + 1, &m), Reason::DropNotFromGateway);
    assert_eq!(into(&syn(SBX, 3001), GW, &m), Reason::DropPortClosed);
    assert_eq!(into(&syn(SBX, 8080), GW, &m), Reason::PassSandboxApi);
    assert_eq!(into(&syn(SBX, 80), GW, &m), Reason::PassSandboxApi);
    assert_eq!(into(&syn(SBX, 8080), 0, &m), Reason::DropNotFromGateway);
    assert_eq!(into(&syn(SBX, 443), GW, &m), Reason::DropReservedPort);
    assert_eq!(into(&syn([198, 18, 9, 9], 3000), GW, &m), Reason::DropUnknownSandbox);
    let v = into_sandbox(parse(&syn(SBX, 3001)[..]), GW, &m);
    assert!(v.for_sandbox, "a drop is counted per sandbox");
    assert_eq!(v.sandbox, SBX);
    let v = into_sandbox(parse(&syn(SBX, 3000)[..]), GW, &m);
    assert!(!v.for_sandbox, "an admitted connection is counted on its policy entry");
}

#[test]
fn an_unconfigured_dataplane_fails_closed() {
    let mut m = maps();
    m.mark = 0;
    assert_eq!(into(&syn(SBX, 3000), 0, &m), Reason::DropNotFromGateway);
    assert_eq!(into(&syn(SBX, 8080), 0, &m), Reason::DropNotFromGateway);
}

#[test]
fn established_icmp_arp_pass_and_udp_needs_a_flow() {
    let mut m = maps();
    assert_eq!(into(&tcp(HOST, SBX, 3001, false, true), 0, &m), Reason::PassEstablished);
    assert_eq!(into(&tcp(HOST, SBX, 3001, true, true), 0, &m), Reason::PassEstablished);
    assert_eq!(into(&icmp(HOST, SBX), 0, &m), Reason::PassIcmp);
    assert_eq!(into(&arp(), 0, &m), Reason::PassNonIp);
    assert_eq!(into(&udp([8, 8, 8, 8], SBX, 53, 5353), 0, &m), Reason::DropUdp);
    let out = out_of_sandbox(parse(&udp(SBX, [8, 8, 8, 8], 5353, 53)[..]), 7, &m);
    assert_eq!(out.reason, Reason::PassOut);
    assert!(out.remember_udp);
    m.udp.insert(out.udp_flow);
    assert_eq!(into(&udp([8, 8, 8, 8], SBX, 53, 5353), 0, &m), Reason::PassUdpReply);
    assert_eq!(into(&udp([8, 8, 8, 8], SBX, 54, 5353), 0, &m), Reason::DropUdp);
}

#[test]
fn ipv6_new_flows_are_dropped() {
    let m = maps();
    assert_eq!(into(&tcp6(3000, true), GW, &m), Reason::DropIpv6);
    assert_eq!(into(&udp6(3000), GW, &m), Reason::DropIpv6);
    assert_eq!(into(&tcp6(3000, false), 0, &m), Reason::PassEstablished);
}

#[test]
fn truncated_and_malformed_headers_fail_closed() {
    let m = maps();
    let full = syn(SBX, 3000);
    for cut in [0, 13, 14, 20, 33, 34, 40, 47] {
        assert_eq!(into(&full[..cut], GW, &m), Reason::DropMalformed, "cut at {cut}");
    }
    let mut bad_ver = full.clone();
    bad_ver[14] = 0x65;
    assert_eq!(into(&bad_ver, GW, &m), Reason::DropMalformed);
    let mut bad_ihl = full.clone();
    bad_ihl[14] = 0x44;
    assert_eq!(into(&bad_ihl, GW, &m), Reason::DropMalformed);
    let mut bad_doff = full.clone();
    bad_doff[14 + 20 + 12] = 0x40;
    assert_eq!(into(&bad_doff, GW, &m), Reason::DropMalformed);
}

#[test]
fn ip_options_and_vlan_tags_are_followed() {
    let m = maps();
    // IPv4 with 8 bytes of options (IHL 7): the TCP header moves.
    assert_eq!(into(&with_ip_options(&syn(SBX, 3001)), GW, &m), Reason::DropPortClosed);
    // Without following the options the "TCP" bytes would be the options: prove the port is read.
    assert_eq!(into(&with_ip_options(&syn(SBX, 3000)), GW, &m), Reason::PassAllowed);
    let tagged = vlan_tagged(&syn(SBX, 3001));
    assert_eq!(into(&tagged, GW, &m), Reason::DropPortClosed);
    assert_eq!(into(&tagged, 0, &m), Reason::DropNotFromGateway);
    assert_eq!(into(&vlan_tagged(&vlan_tagged(&syn(SBX, 3000))), GW, &m), Reason::PassAllowed, "QinQ");
}

#[test]
fn fragments_after_the_first_carry_no_header_and_pass() {
    let m = maps();
    let mut frag = syn(SBX, 3001);
    frag[14 + 6] = 0x00;
    frag[14 + 7] = 0x10;
    assert_eq!(into(&frag, 0, &m), Reason::PassFragment);
}

#[test]
fn out_of_a_sandbox_isolation_protection_and_spoofing() {
    let m = maps();
    let out = |pkt: Vec<u8>, ifindex| out_of_sandbox(parse(&pkt[..]), ifindex, &m).reason;
    assert_eq!(out(tcp(SBX, [1, 1, 1, 1], 443, true, false), 7), Reason::PassOut);
    assert_eq!(out(tcp(SBX, SBX2, 3000, true, false), 7), Reason::DropSandboxToSandbox);
    assert_eq!(out(tcp(SBX, SBX2, 3000, false, true), 7), Reason::DropSandboxToSandbox);
    assert_eq!(out(tcp(SBX, HOST, 9901, true, false), 7), Reason::DropProtected);
    assert_eq!(out(tcp(SBX, HOST, 9902, true, false), 7), Reason::PassOut);
    assert_eq!(out(tcp(SBX2, [1, 1, 1, 1], 80, true, false), 7), Reason::DropSpoofed);
    assert_eq!(out(tcp(SBX, [1, 1, 1, 1], 80, true, false)[..20].to_vec(), 7), Reason::DropMalformed);
}

#[test]
fn edge_guard_only_judges_new_tcp() {
    let m = maps();
    let edge = |pkt: &[u8]| edge_guard(parse(pkt), &m).reason;
    assert_eq!(edge(&syn(HOST, 443)), Reason::PassEdgePublic);
    assert_eq!(edge(&syn(HOST, 22)), Reason::DropEdgeClosedPort);
    assert_eq!(edge(&tcp(HOST, HOST, 22, false, true)), Reason::PassEdgeOther);
    assert_eq!(edge(&udp(HOST, HOST, 1, 22)), Reason::PassEdgeOther);
    assert_eq!(edge(&syn(HOST, 22)[..30]), Reason::PassEdgeMalformed);
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
