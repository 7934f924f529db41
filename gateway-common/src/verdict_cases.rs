//! The verdict table: packets, the hook that judges them, the mark they carry and the reason
//! expected, for one standard set of maps. Run against the host logic (`decide` tests) and the
//! real kernel object (`tests/tests/ebpf_verdicts.rs`, `BPF_PROG_TEST_RUN`), so both agree.
//!
//! The standard maps: gateway mark [`MARK`]; sandboxes [`SBX`] (on the interface the programs
//! run on) and [`SBX2`] (another interface); [`SBX`]:3000/TCP declared; 9901/TCP protected on
//! every host address; 443/TCP public on the edge; host addresses [`HOST`] and [`HOST_OTHER`],
//! with [`HOST_ALLOWED`] open to sandboxes; the L4 ports of [`L4_EXPOSED`] exposed with their
//! allow-lists, [`L4_UNEXPOSED`] not; no rate limit (see [`rate_limit_sequence`]).

use crate::counters::{Hook, Reason};
use crate::testpkt::{
    LINK_LOCAL6, arp, icmp, icmp_of_type, ping6_to, syn6_to, tcp, tcp6, udp, udp6, udp6_to, vlan_tagged,
    with_ip_options,
};
use std::{format, string::String, vec, vec::Vec};

/// The gateway's mark in the standard maps.
pub const MARK: u32 = 0x6777;
/// A registered sandbox, on the interface the programs run on.
pub const SBX: [u8; 4] = [198, 18, 0, 2];
/// Another registered sandbox, on another interface.
pub const SBX2: [u8; 4] = [198, 18, 1, 2];
/// The host side.
pub const HOST: [u8; 4] = [198, 18, 0, 1];
/// Another address of the host (another interface's).
pub const HOST_OTHER: [u8; 4] = [198, 18, 0, 129];
/// IPv6 all-nodes multicast.
const ALL_NODES6: [u8; 16] = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// The host port sandboxes may open connections to: UDP 53 (a host-provided resolver).
pub const HOST_ALLOWED: (u8, u16) = (crate::IPPROTO_UDP, 53);

/// A source prefix of an allow-list: (network address, CIDR length).
pub type Prefix = ([u8; 4], u8);

/// The exposed L4 ports and their allow-lists.
pub const L4_EXPOSED: [(u16, &[Prefix]); 3] = [
    (L4_PORT, &[(ALLOWED_NET, 24), ([198, 18, 9, 9], 32)]),
    (L4_PORT_ANY, &[([0; 4], 0)]),
    (L4_PORT_OTHER, &[(OTHER_NET, 24)]),
];
/// An L4 port open to [`ALLOWED_NET`]/24 and 198.18.9.9/32.
pub const L4_PORT: u16 = 20001;
/// An L4 port open to every source (`0.0.0.0/0`).
pub const L4_PORT_ANY: u16 = 20002;
/// An L4 port open to [`OTHER_NET`]/24 only.
pub const L4_PORT_OTHER: u16 = 20003;
/// A port of the L4 range that is not exposed.
pub const L4_UNEXPOSED: u16 = 20004;
/// The network [`L4_PORT`] allows.
pub const ALLOWED_NET: [u8; 4] = [198, 18, 4, 0];
/// The network [`L4_PORT_OTHER`] allows.
pub const OTHER_NET: [u8; 4] = [198, 18, 5, 0];
/// A client in [`ALLOWED_NET`].
pub const ALLOWED_SRC: [u8; 4] = [198, 18, 4, 7];
/// A client in [`OTHER_NET`] (outside [`L4_PORT`]'s allow-list).
pub const OTHER_SRC: [u8; 4] = [198, 18, 5, 7];
/// The edge guard's rate limit in [`rate_limit_sequence`]: 1 new connection per second per
/// source, bursts of 3.
pub const EDGE_RATE: (u32, u32) = (1, 3);

/// One case.
pub struct Case {
    /// What it shows.
    pub what: String,
    /// The program that judges it.
    pub hook: Hook,
    /// The frame (Ethernet on).
    pub packet: Vec<u8>,
    /// `skb->mark` (tc hooks).
    pub mark: u32,
    /// The verdict expected.
    pub reason: Reason,
}

fn case(what: &str, hook: Hook, packet: Vec<u8>, mark: u32, reason: Reason) -> Case {
    Case { what: what.into(), hook, packet, mark, reason }
}

/// A SYN from the host to `dst:dport`.
pub fn syn(dst: [u8; 4], dport: u16) -> Vec<u8> {
    tcp(HOST, dst, dport, true, false)
}

/// A SYN from `src` to the host's `dport` (a client on the public interface).
pub fn syn_from(src: [u8; 4], dport: u16) -> Vec<u8> {
    tcp(src, HOST, dport, true, false)
}

/// Every stateless case, for the standard maps.
pub fn cases() -> Vec<Case> {
    use Hook::{Edge, SandboxIn as In, SandboxOut as Out};
    use Reason::*;
    let full = syn(SBX, 3000);
    let patched = |offset: usize, byte: u8| {
        let mut p = full.clone();
        p[offset] = byte;
        p
    };
    let mut fragment = syn(SBX, 3001);
    fragment[14 + 6] = 0x00;
    fragment[14 + 7] = 0x10;
    let mut v = vec![
        case("declared port from the gateway", In, syn(SBX, 3000), MARK, PassAllowed),
        case("declared port, unmarked", In, syn(SBX, 3000), 0, DropNotFromGateway),
        case("declared port, wrong mark", In, syn(SBX, 3000), MARK ^ 1, DropNotFromGateway),
        case("declared port, mark + 1", In, syn(SBX, 3000), MARK + 1, DropNotFromGateway),
        case("undeclared port from the gateway", In, syn(SBX, 3001), MARK, DropPortClosed),
        case("sandbox API 8080 from the gateway", In, syn(SBX, 8080), MARK, PassSandboxApi),
        case("system port 80 from the gateway", In, syn(SBX, 80), MARK, PassSandboxApi),
        case("8080 unmarked", In, syn(SBX, 8080), 0, DropNotFromGateway),
        case("80 unmarked", In, syn(SBX, 80), 0, DropNotFromGateway),
        case("443 from the gateway", In, syn(SBX, 443), MARK, DropReservedPort),
        case("443 unmarked", In, syn(SBX, 443), 0, DropReservedPort),
        case("unknown sandbox", In, syn([198, 18, 9, 9], 3000), MARK, DropUnknownSandbox),
        case("established (ACK)", In, tcp(HOST, SBX, 3001, false, true), 0, PassEstablished),
        case("SYN+ACK", In, tcp(HOST, SBX, 3001, true, true), 0, PassEstablished),
        case("new UDP", In, udp([8, 8, 8, 8], SBX, 53, 5353), MARK, DropUdp),
        case("ICMP echo", In, icmp(HOST, SBX), 0, PassIcmp),
        case("truncated ICMP", In, icmp(HOST, SBX)[..14 + 20 + 3].to_vec(), 0, DropMalformed),
        case("ARP", In, arp(), 0, PassNonIp),
        case("IPv6 SYN", In, tcp6(3000, true), MARK, DropIpv6),
        case("IPv6 UDP", In, udp6(3000), MARK, DropIpv6),
        case("IPv6 established", In, tcp6(3000, false), 0, PassEstablished),
        case("IP options followed (allowed port)", In, with_ip_options(&syn(SBX, 3000)), MARK, PassAllowed),
        case("IP options followed (closed port)", In, with_ip_options(&syn(SBX, 3001)), MARK, DropPortClosed),
        case("VLAN tag followed (allowed)", In, vlan_tagged(&syn(SBX, 3000)), MARK, PassAllowed),
        case("VLAN tag followed (unmarked)", In, vlan_tagged(&syn(SBX, 3000)), 0, DropNotFromGateway),
        case("VLAN tag followed (closed port)", In, vlan_tagged(&syn(SBX, 3001)), MARK, DropPortClosed),
        case("QinQ followed (allowed)", In, vlan_tagged(&vlan_tagged(&syn(SBX, 3000))), MARK, PassAllowed),
        case("a fragment after the first", In, fragment, 0, PassFragment),
        case("IP version 6 in an IPv4 frame", In, patched(14, 0x65), MARK, DropMalformed),
        case("IHL 3", In, patched(14, 0x43), MARK, DropMalformed),
        case("IHL 4", In, patched(14, 0x44), MARK, DropMalformed),
        case("IHL 15 past the end", In, patched(14, 0x4f), MARK, DropMalformed),
        case("TCP data offset 2", In, patched(14 + 20 + 12, 0x20), MARK, DropMalformed),
        case("TCP data offset 4", In, patched(14 + 20 + 12, 0x40), MARK, DropMalformed),
        case("to the internet", Out, tcp(SBX, [1, 1, 1, 1], 443, true, false), 0, PassOut),
        case("to another sandbox", Out, tcp(SBX, SBX2, 3000, true, false), 0, DropSandboxToSandbox),
        case("established to another sandbox", Out, tcp(SBX, SBX2, 3000, false, true), 0, DropSandboxToSandbox),
        case("to the admin API", Out, tcp(SBX, HOST, 9901, true, false), 0, DropProtected),
        case("to the admin API, SYN+ACK", Out, tcp(SBX, HOST, 9901, true, true), 0, DropProtected),
        case("to another host port", Out, tcp(SBX, HOST, 9902, true, false), 0, DropHost),
        case("to another host address", Out, tcp(SBX, HOST_OTHER, 22, true, false), 0, DropHost),
        case("to a host address, SYN+ACK", Out, tcp(SBX, HOST_OTHER, 22, true, true), 0, PassOut),
        case("to a host address, ACK", Out, tcp(SBX, HOST, 9902, false, true), 0, PassOut),
        case("to a host address, allowed port", Out, udp(SBX, HOST, 5353, 53), 0, PassHostAllowed),
        case("to a host address, allowed port on TCP", Out, tcp(SBX, HOST, 53, true, false), 0, DropHost),
        case("UDP to a host address", Out, udp(SBX, HOST_OTHER, 5353, 54), 0, DropHost),
        case("UDP to limited broadcast", Out, udp(SBX, [255; 4], 68, 67), 0, DropHost),
        case("UDP to multicast", Out, udp(SBX, [224, 0, 0, 251], 5353, 5353), 0, DropHost),
        case("UDP to multicast, allowed port", Out, udp(SBX, [224, 0, 0, 251], 5353, 53), 0, PassHostAllowed),
        case("ICMP echo request to the host", Out, icmp(SBX, HOST), 0, DropHost),
        case("ICMP echo reply to the host", Out, icmp_of_type(SBX, HOST, 0), 0, PassOut),
        case("ICMP unreachable to the host", Out, icmp_of_type(SBX, HOST, 3), 0, PassOut),
        case("ICMP time exceeded to the host", Out, icmp_of_type(SBX, HOST_OTHER, 11), 0, PassOut),
        case("ICMP redirect to the host", Out, icmp_of_type(SBX, HOST, 5), 0, DropHost),
        case("ICMP echo request to the internet", Out, icmp(SBX, [1, 1, 1, 1]), 0, PassOut),
        case("UDP to the internet", Out, udp(SBX, [1, 1, 1, 1], 5353, 54), 0, PassOut),
        case("IPv6 SYN to a global address", Out, tcp6(22, true), 0, PassOut),
        case("IPv6 SYN to the host's link-local address", Out, syn6_to(LINK_LOCAL6, 22), 0, DropHost),
        case("IPv6 UDP to all-nodes multicast", Out, udp6_to(ALL_NODES6, 5353), 0, DropHost),
        case("IPv6 UDP to link-local, allowed port", Out, udp6_to(LINK_LOCAL6, 53), 0, PassHostAllowed),
        case("IPv6 ping to the host's link-local address", Out, ping6_to(LINK_LOCAL6, false), 0, DropHost),
        case("IPv6 ping reply to link-local", Out, ping6_to(LINK_LOCAL6, true), 0, PassOut),
        case("spoofing another sandbox", Out, tcp(SBX2, [1, 1, 1, 1], 443, true, false), 0, DropSpoofed),
        case("spoofing another sandbox, port 80", Out, tcp(SBX2, [1, 1, 1, 1], 80, true, false), 0, DropSpoofed),
        case("truncated TCP", Out, tcp(SBX, [1, 1, 1, 1], 443, true, false)[..40].to_vec(), 0, DropMalformed),
        case("truncated IP", Out, tcp(SBX, [1, 1, 1, 1], 80, true, false)[..20].to_vec(), 0, DropMalformed),
        case("ARP out", Out, arp(), 0, PassNonIp),
        case("public port", Edge, syn(HOST, 443), 0, PassEdgePublic),
        case("closed port", Edge, syn(HOST, 22), 0, DropEdgeClosedPort),
        case("closed port, VLAN", Edge, vlan_tagged(&syn(HOST, 22)), 0, DropEdgeClosedPort),
        case("public port, IP options", Edge, with_ip_options(&syn(HOST, 443)), 0, PassEdgePublic),
        case("established at the edge", Edge, tcp(HOST, HOST, 22, false, true), 0, PassEdgeOther),
        case("UDP at the edge", Edge, udp(HOST, HOST, 1, 22), 0, PassEdgeOther),
        case("truncated at the edge", Edge, syn(HOST, 22)[..30].to_vec(), 0, PassEdgeMalformed),
        case("L4 port, allowed source", Edge, syn_from(ALLOWED_SRC, L4_PORT), 0, PassEdgeL4),
        case("L4 port, first address of the prefix", Edge, syn_from(ALLOWED_NET, L4_PORT), 0, PassEdgeL4),
        case("L4 port, last address of the prefix", Edge, syn_from([198, 18, 4, 255], L4_PORT), 0, PassEdgeL4),
        case("L4 port, a /32", Edge, syn_from([198, 18, 9, 9], L4_PORT), 0, PassEdgeL4),
        case("L4 port, next to the /32", Edge, syn_from([198, 18, 9, 8], L4_PORT), 0, DropEdgeNotAllowed),
        case("L4 port, source outside", Edge, syn_from(OTHER_SRC, L4_PORT), 0, DropEdgeNotAllowed),
        case("L4 port, below the prefix", Edge, syn_from([198, 18, 3, 255], L4_PORT), 0, DropEdgeNotAllowed),
        case("L4 port, the host itself", Edge, syn(HOST, L4_PORT), 0, DropEdgeNotAllowed),
        case("L4 port, VLAN", Edge, vlan_tagged(&syn_from(ALLOWED_SRC, L4_PORT)), 0, PassEdgeL4),
        case("L4 port, IP options", Edge, with_ip_options(&syn_from(OTHER_SRC, L4_PORT)), 0, DropEdgeNotAllowed),
        case("L4 port open to all (/0)", Edge, syn_from(OTHER_SRC, L4_PORT_ANY), 0, PassEdgeL4),
        case("L4 port open to all, any source", Edge, syn_from([203, 0, 113, 9], L4_PORT_ANY), 0, PassEdgeL4),
        case("another port's allow-list", Edge, syn_from(ALLOWED_SRC, L4_PORT_OTHER), 0, DropEdgeNotAllowed),
        case("its own allow-list", Edge, syn_from(OTHER_SRC, L4_PORT_OTHER), 0, PassEdgeL4),
        case("L4 range, port not exposed", Edge, syn_from(ALLOWED_SRC, L4_UNEXPOSED), 0, DropEdgeClosedPort),
        case("public port from an L4 client", Edge, syn_from(OTHER_SRC, 443), 0, PassEdgePublic),
        case("L4 port, established", Edge, tcp(OTHER_SRC, HOST, L4_PORT, false, true), 0, PassEdgeOther),
        case("L4 port, SYN+ACK", Edge, tcp(OTHER_SRC, HOST, L4_PORT, true, true), 0, PassEdgeOther),
        case("IPv6 SYN to a public port", Edge, tcp6(443, true), 0, PassEdgePublic),
        case("IPv6 SYN to an L4 port (IPv4 only)", Edge, tcp6(L4_PORT_ANY, true), 0, DropEdgeClosedPort),
        case("IPv6 established at the edge", Edge, tcp6(L4_PORT_ANY, false), 0, PassEdgeOther),
    ];
    for cut in [0, 13, 14, 20, 33, 34, 40, 47] {
        v.push(case(&format!("cut at {cut} bytes"), In, full[..cut].to_vec(), MARK, DropMalformed));
    }
    v
}

/// UDP replies pass only for flows the sandbox started: run in order, the state carried.
pub fn udp_flow_sequence() -> Vec<Case> {
    vec![
        case("before the query", Hook::SandboxIn, udp([9, 9, 9, 9], SBX, 53, 5353), 0, Reason::DropUdp),
        case("the query", Hook::SandboxOut, udp(SBX, [9, 9, 9, 9], 5353, 53), 0, Reason::PassOut),
        case("the reply", Hook::SandboxIn, udp([9, 9, 9, 9], SBX, 53, 5353), 0, Reason::PassUdpReply),
        case("other source port", Hook::SandboxIn, udp([9, 9, 9, 9], SBX, 54, 5353), 0, Reason::DropUdp),
    ]
}

/// With the gateway mark unset (0) in the configuration, every new connection is dropped.
pub fn unconfigured_cases() -> Vec<Case> {
    vec![
        case("mark 0, unmarked", Hook::SandboxIn, syn(SBX, 3000), 0, Reason::DropNotFromGateway),
        case("mark 0, 8080", Hook::SandboxIn, syn(SBX, 8080), 0, Reason::DropNotFromGateway),
    ]
}

/// The per-source rate limit ([`EDGE_RATE`] configured), run in order with the state carried,
/// within much less than a second (the bucket refills 1 connection per second): the burst of
/// a source passes, whatever the ports it would pass on; a SYN to a closed port, or from
/// outside an allow-list, is dropped as such and takes no token; over the burst, a SYN is
/// dropped, to a public port as to an L4 port; another source has its own bucket; IPv6 is not
/// limited.
pub fn rate_limit_sequence() -> Vec<Case> {
    use Reason::*;
    let e = Hook::Edge;
    vec![
        case("1st SYN of the burst", e, syn_from(ALLOWED_SRC, L4_PORT), 0, PassEdgeL4),
        case("2nd SYN of the burst", e, syn_from(ALLOWED_SRC, 443), 0, PassEdgePublic),
        case("closed port: no token taken", e, syn_from(ALLOWED_SRC, 22), 0, DropEdgeClosedPort),
        case("3rd SYN of the burst", e, syn_from(ALLOWED_SRC, L4_PORT), 0, PassEdgeL4),
        case("over the burst, L4 port", e, syn_from(ALLOWED_SRC, L4_PORT), 0, DropEdgeRate),
        case("over the burst, public port", e, syn_from(ALLOWED_SRC, 443), 0, DropEdgeRate),
        case("over the burst, closed port", e, syn_from(ALLOWED_SRC, 22), 0, DropEdgeClosedPort),
        case("over the burst, established", e, tcp(ALLOWED_SRC, HOST, L4_PORT, false, true), 0, PassEdgeOther),
        case("another source, L4 port not allowed", e, syn_from(OTHER_SRC, L4_PORT), 0, DropEdgeNotAllowed),
        case("another source", e, syn_from(OTHER_SRC, 443), 0, PassEdgePublic),
        case("IPv6 is not limited", e, tcp6(443, true), 0, PassEdgePublic),
        case("IPv6 is not limited (2)", e, tcp6(443, true), 0, PassEdgePublic),
        case("IPv6 is not limited (3)", e, tcp6(443, true), 0, PassEdgePublic),
        case("IPv6 is not limited (4)", e, tcp6(443, true), 0, PassEdgePublic),
    ]
}
