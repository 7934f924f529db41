//! Hand-made packets for tests and benchmarks (host only: feature `test-packets`, or this
//! crate's own tests). One place, so the host tests of the decision logic, the
//! `BPF_PROG_TEST_RUN` tests of the real programs and the benchmark judge the same bytes.

use etherparse::PacketBuilder;
use std::vec::Vec;

/// Ethernet + IPv4 + TCP from `src:40000` to `dst:dport`, with SYN and/or ACK.
pub fn tcp(src: [u8; 4], dst: [u8; 4], dport: u16, syn: bool, ack: bool) -> Vec<u8> {
    let mut b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4(src, dst, 64).tcp(40000, dport, 1, 1000);
    if syn {
        b = b.syn();
    }
    if ack {
        b = b.ack(1);
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("a valid TCP packet");
    out
}

/// Ethernet + IPv4 + UDP with 8 bytes of payload.
pub fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(src, dst, 64)
        .udp(sport, dport)
        .write(&mut out, &[0; 8])
        .expect("a valid UDP packet");
    out
}

/// Ethernet + IPv4 + ICMP echo request.
pub fn icmp(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(src, dst, 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut out, &[0; 8])
        .expect("a valid ICMP packet");
    out
}

/// Ethernet + IPv4 + ICMP of `icmp_type` (code 0, 8 bytes of header, 8 of payload).
pub fn icmp_of_type(src: [u8; 4], dst: [u8; 4], icmp_type: u8) -> Vec<u8> {
    let mut out = icmp(src, dst);
    out[14 + 20] = icmp_type;
    out
}

/// Ethernet + IPv6 + TCP to port `dport`, SYN or ACK.
pub fn tcp6(dport: u16, syn: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv6([1; 16], [2; 16], 64).tcp(1, dport, 1, 100);
    let b = if syn { b.syn() } else { b.ack(5) };
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("a valid IPv6 TCP packet");
    out
}

/// The host's IPv6 link-local address on a sandbox's interface, in the packets below.
pub const LINK_LOCAL6: [u8; 16] = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

/// Ethernet + IPv6 + TCP SYN to `dst`.
pub fn syn6_to(dst: [u8; 16], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv6([1; 16], dst, 64)
        .tcp(1, dport, 1, 100)
        .syn()
        .write(&mut out, &[])
        .expect("a valid IPv6 TCP packet");
    out
}

/// Ethernet + IPv6 + UDP to `dst`.
pub fn udp6_to(dst: [u8; 16], dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv6([1; 16], dst, 64)
        .udp(1, dport)
        .write(&mut out, &[0; 8])
        .expect("a valid IPv6 UDP packet");
    out
}

/// Ethernet + IPv6 + ICMPv6 echo request (or reply) to `dst`.
pub fn ping6_to(dst: [u8; 16], reply: bool) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv6([1; 16], dst, 64);
    let b = if reply { b.icmpv6_echo_reply(1, 1) } else { b.icmpv6_echo_request(1, 1) };
    let mut out = Vec::new();
    b.write(&mut out, &[0; 8]).expect("a valid ICMPv6 packet");
    out
}

/// Ethernet + IPv6 + UDP.
pub fn udp6(dport: u16) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv6([1; 16], [2; 16], 64)
        .udp(1, dport)
        .write(&mut out, &[0; 8])
        .expect("a valid IPv6 UDP packet");
    out
}

/// An ARP-sized frame with the ARP ethertype.
pub fn arp() -> Vec<u8> {
    let mut f = std::vec![0u8; 42];
    f[12..14].copy_from_slice(&[0x08, 0x06]);
    f
}

/// `pkt` (Ethernet + 20-byte IPv4 header + …) with 8 bytes of IPv4 options inserted (IHL 7).
pub fn with_ip_options(pkt: &[u8]) -> Vec<u8> {
    let mut v = pkt[..14].to_vec();
    v.push(0x47);
    v.extend_from_slice(&pkt[15..34]);
    v.extend_from_slice(&[1; 8]);
    v.extend_from_slice(&pkt[34..]);
    v
}

/// `pkt` with an 802.1Q tag (VLAN 7) inserted after the MAC addresses.
pub fn vlan_tagged(pkt: &[u8]) -> Vec<u8> {
    let mut v = pkt[..12].to_vec();
    v.extend_from_slice(&[0x81, 0x00, 0x00, 0x07]);
    v.extend_from_slice(&pkt[12..]);
    v
}
