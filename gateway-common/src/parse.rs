//! Header parsing over one bounds-checked accessor, shared by the kernel and the host tests.

use crate::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// Why a packet could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The header runs past the end of the packet.
    Truncated,
    /// A header field has an impossible value (IP version, IHL, TCP data offset).
    Malformed,
}

/// The one bounds-checked way to read packet bytes.
pub trait Packet {
    /// Reads a `T` (a byte array) at `offset`, or fails if it does not fit in the packet.
    fn load<const N: usize>(&self, offset: usize) -> Result<[u8; N], ParseError>;
}

impl Packet for [u8] {
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Result<[u8; N], ParseError> {
        let end = offset.checked_add(N).ok_or(ParseError::Truncated)?;
        let bytes = self.get(offset..end).ok_or(ParseError::Truncated)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }
}

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const ETH_HLEN: usize = 14;
const VLAN_HLEN: usize = 4;
/// TCP flag bits.
pub const TCP_SYN: u8 = 0x02;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// The transport part of an IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4 {
    /// TCP with its ports (network order) and flags byte.
    Tcp { sport: [u8; 2], dport: [u8; 2], flags: u8 },
    /// UDP with its ports (network order).
    Udp { sport: [u8; 2], dport: [u8; 2] },
    /// ICMP / ICMPv6.
    Icmp,
    /// A non-first IPv4 fragment: no L4 header.
    Fragment,
    /// Any other protocol (or an IPv6 extension header chain).
    Other(u8),
}

impl L4 {
    /// A TCP SYN without ACK: the first packet of a new connection.
    pub const fn is_new_tcp(&self) -> bool {
        matches!(self, L4::Tcp { flags, .. } if *flags & (TCP_SYN | TCP_ACK) == TCP_SYN)
    }
}

/// What the programs need to know about a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Summary {
    /// Not IPv4 or IPv6 (ARP and friends).
    NonIp,
    /// IPv4, addresses in network order.
    Ipv4 { src: [u8; 4], dst: [u8; 4], l4: L4 },
    /// IPv6 (addresses are not needed by any decision yet).
    Ipv6 { l4: L4 },
}

/// Parses Ethernet (with up to two VLAN tags), IPv4 (with options) or IPv6, and the first bytes
/// of TCP or UDP.
#[inline(always)]
pub fn parse<P: Packet + ?Sized>(p: &P) -> Result<Summary, ParseError> {
    let eth: [u8; ETH_HLEN] = p.load(0)?;
    let mut ethertype = u16::from_be_bytes([eth[12], eth[13]]);
    let mut off = ETH_HLEN;
    // Two unrolled VLAN steps (802.1ad outer, 802.1Q inner): no loop for the verifier.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        let tag: [u8; VLAN_HLEN] = p.load(off)?;
        ethertype = u16::from_be_bytes([tag[2], tag[3]]);
        off += VLAN_HLEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            let tag: [u8; VLAN_HLEN] = p.load(off)?;
            ethertype = u16::from_be_bytes([tag[2], tag[3]]);
            off += VLAN_HLEN;
        }
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(p, off),
        ETH_P_IPV6 => parse_ipv6(p, off),
        _ => Ok(Summary::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4<P: Packet + ?Sized>(p: &P, off: usize) -> Result<Summary, ParseError> {
    let ip: [u8; 20] = p.load(off)?;
    if ip[0] >> 4 != 4 {
        return Err(ParseError::Malformed);
    }
    let ihl = (ip[0] & 0x0f) as usize;
    if ihl < 5 {
        return Err(ParseError::Malformed);
    }
    let src = [ip[12], ip[13], ip[14], ip[15]];
    let dst = [ip[16], ip[17], ip[18], ip[19]];
    let frag_offset = u16::from_be_bytes([ip[6] & 0x1f, ip[7]]);
    let l4 = if frag_offset != 0 {
        L4::Fragment
    } else {
        parse_l4(p, off + ihl * 4, ip[9])?
    };
    Ok(Summary::Ipv4 { src, dst, l4 })
}

#[inline(always)]
fn parse_ipv6<P: Packet + ?Sized>(p: &P, off: usize) -> Result<Summary, ParseError> {
    let ip: [u8; 40] = p.load(off)?;
    if ip[0] >> 4 != 6 {
        return Err(ParseError::Malformed);
    }
    Ok(Summary::Ipv6 { l4: parse_l4(p, off + 40, ip[6])? })
}

#[inline(always)]
fn parse_l4<P: Packet + ?Sized>(p: &P, off: usize, proto: u8) -> Result<L4, ParseError> {
    match proto {
        IPPROTO_TCP => {
            let tcp: [u8; 14] = p.load(off)?;
            if tcp[12] >> 4 < 5 {
                return Err(ParseError::Malformed);
            }
            Ok(L4::Tcp { sport: [tcp[0], tcp[1]], dport: [tcp[2], tcp[3]], flags: tcp[13] })
        }
        IPPROTO_UDP => {
            let udp: [u8; 4] = p.load(off)?;
            Ok(L4::Udp { sport: [udp[0], udp[1]], dport: [udp[2], udp[3]] })
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => Ok(L4::Icmp),
        other => Ok(L4::Other(other)),
    }
}
