//! Header parsing over one bounds-checked accessor, shared by the kernel and the host tests.
//!
//! Everything here returns fully initialised plain values (fieldless enums, byte arrays) rather
//! than enums with payloads: LLVM may leave the unused payload bytes of a data-carrying enum in
//! an undefined register, which the BPF verifier refuses to read ("R5 !read_ok").

use crate::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// Why a read failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The header runs past the end of the packet.
    Truncated,
}

/// The one bounds-checked way to read packet bytes.
pub trait Packet {
    /// Fills `out` with the `N` bytes at `offset`, or fails (leaving `out` untouched) if they do
    /// not all lie inside the packet.
    fn load<const N: usize>(&self, offset: usize, out: &mut [u8; N]) -> Result<(), ParseError>;
}

impl Packet for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize, out: &mut [u8; N]) -> Result<(), ParseError> {
        let end = offset.checked_add(N).ok_or(ParseError::Truncated)?;
        out.copy_from_slice(self.get(offset..end).ok_or(ParseError::Truncated)?);
        Ok(())
    }
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// The network layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Net {
    /// Truncated or impossible IP/L4 header.
    #[default]
    Malformed,
    /// Not IPv4 or IPv6 (ARP and friends).
    NonIp,
    /// IPv4.
    Ipv4,
    /// IPv6.
    Ipv6,
}

/// The transport layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Transport {
    /// Not parsed (non-IP or malformed).
    #[default]
    None,
    /// TCP: ports and flags are set.
    Tcp,
    /// UDP: ports are set.
    Udp,
    /// ICMP or ICMPv6.
    Icmp,
    /// A non-first IPv4 fragment: no L4 header.
    Fragment,
    /// Another protocol (or an IPv6 extension header chain).
    Other,
}

/// What the programs need to know about a packet. Fields that do not apply are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Summary {
    /// Network layer.
    pub net: Net,
    /// Transport layer.
    pub transport: Transport,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// IPv4 source address (network order).
    pub src: [u8; 4],
    /// IPv4 destination address (network order).
    pub dst: [u8; 4],
    /// Source port (network order).
    pub sport: [u8; 2],
    /// Destination port (network order).
    pub dport: [u8; 2],
}

impl Summary {
    /// A TCP SYN without ACK: the first packet of a new connection.
    pub const fn is_new_tcp(&self) -> bool {
        matches!(self.transport, Transport::Tcp) && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }
    /// The destination port in host order.
    pub const fn dest_port(&self) -> u16 {
        u16::from_be_bytes(self.dport)
    }
    fn malformed() -> Self {
        Self::default()
    }
}

/// Parses Ethernet (with up to two VLAN tags), IPv4 (with options) or IPv6, and the first bytes
/// of TCP or UDP.
#[inline(always)]
pub fn parse<P: Packet + ?Sized>(p: &P) -> Summary {
    let mut eth = [0u8; ETH_HLEN];
    if p.load(0, &mut eth).is_err() {
        return Summary::malformed();
    }
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    // Two unrolled VLAN steps (802.1ad outer, 802.1Q inner): no loop for the verifier.
    let mut tag = [0u8; VLAN_HLEN];
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        if p.load(off, &mut tag).is_err() {
            return Summary::malformed();
        }
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += VLAN_HLEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            if p.load(off, &mut tag).is_err() {
                return Summary::malformed();
            }
            ethertype = u16::from_be_bytes([tag[2], tag[3]]);
            off += VLAN_HLEN;
        }
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(p, off),
        ETH_P_IPV6 => parse_ipv6(p, off),
        _ => Summary { net: Net::NonIp, ..Summary::default() },
    }
}

#[inline(always)]
fn parse_ipv4<P: Packet + ?Sized>(p: &P, off: usize) -> Summary {
    let mut ip = [0u8; 20];
    if p.load(off, &mut ip).is_err() || ip[0] >> 4 != 4 || ip[0] & 0x0f < 5 {
        return Summary::malformed();
    }
    let ihl = (ip[0] & 0x0f) as usize;
    let mut s = Summary {
        net: Net::Ipv4,
        src: [ip[12], ip[13], ip[14], ip[15]],
        dst: [ip[16], ip[17], ip[18], ip[19]],
        ..Summary::default()
    };
    if u16::from_be_bytes([ip[6] & 0x1f, ip[7]]) != 0 {
        s.transport = Transport::Fragment;
        return s;
    }
    parse_l4(p, off + ihl * 4, ip[9], s)
}

#[inline(always)]
fn parse_ipv6<P: Packet + ?Sized>(p: &P, off: usize) -> Summary {
    let mut ip = [0u8; 40];
    if p.load(off, &mut ip).is_err() || ip[0] >> 4 != 6 {
        return Summary::malformed();
    }
    parse_l4(p, off + 40, ip[6], Summary { net: Net::Ipv6, ..Summary::default() })
}

#[inline(always)]
fn parse_l4<P: Packet + ?Sized>(p: &P, off: usize, proto: u8, mut s: Summary) -> Summary {
    match proto {
        IPPROTO_TCP => {
            let mut tcp = [0u8; 14];
            if p.load(off, &mut tcp).is_err() || tcp[12] >> 4 < 5 {
                return Summary::malformed();
            }
            s.transport = Transport::Tcp;
            s.sport = [tcp[0], tcp[1]];
            s.dport = [tcp[2], tcp[3]];
            s.tcp_flags = tcp[13];
        }
        IPPROTO_UDP => {
            let mut udp = [0u8; 4];
            if p.load(off, &mut udp).is_err() {
                return Summary::malformed();
            }
            s.transport = Transport::Udp;
            s.sport = [udp[0], udp[1]];
            s.dport = [udp[2], udp[3]];
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => s.transport = Transport::Icmp,
        _ => s.transport = Transport::Other,
    }
    s
}
