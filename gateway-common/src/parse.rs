//! Header parsing over one bounds-checked accessor, shared by the kernel and the host tests.
//!
//! Everything here returns fully initialised plain values (fieldless enums, byte arrays) rather
//! than enums with payloads: LLVM may leave the unused payload bytes of a data-carrying enum in
//! an undefined register, which the BPF verifier refuses to read ("R5 !read_ok").

use crate::{IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP};

/// Why a read failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The header runs past the end of the packet, or a field has an impossible value (IP
    /// version, IHL, TCP data offset).
    Truncated,
}

/// The one bounds-checked way to read packet bytes: [`Packet::header`] checks once that a whole
/// header of `N` bytes lies inside the packet and returns a [`Header`], whose field reads are
/// checked against `N` at compile time.
///
/// Fields are read one scalar at a time, never copied as arrays: array copies make LLVM emit
/// calls to `memcpy`/`memset` (byte loops in BPF) that cost more than the rest of a program. And
/// the check compares `start + N > end` with `N` ≥ 2, a form the verifier turns into a proven
/// range (`start + 1 > end` would be rewritten by LLVM into a `>=` it does not).
pub trait Packet {
    /// The `N` bytes at `offset`, if they all lie inside the packet.
    fn header<const N: usize>(&self, offset: usize) -> Result<Header<'_, N>, ParseError>;
}

/// `N` bytes of a packet known to be in bounds.
#[derive(Clone, Copy)]
pub struct Header<'a, const N: usize> {
    at: *const u8,
    _packet: core::marker::PhantomData<&'a [u8]>,
}

impl<'a, const N: usize> Header<'a, N> {
    /// # Safety
    /// `[at, at + N)` must be readable for `'a`.
    #[inline(always)]
    pub unsafe fn new(at: *const u8) -> Self {
        Self { at, _packet: core::marker::PhantomData }
    }
    /// The byte at `I`.
    #[inline(always)]
    pub fn u8<const I: usize>(&self) -> u8 {
        const { assert!(I < N) };
        // SAFETY: I < N and the header is in bounds.
        unsafe { core::ptr::read_unaligned(self.at.add(I)) }
    }
    /// The big-endian u16 at `I`.
    #[inline(always)]
    pub fn be16<const I: usize>(&self) -> u16 {
        u16::from_be_bytes(self.pair::<I>())
    }
    /// The two bytes at `I`, in packet order.
    #[inline(always)]
    pub fn pair<const I: usize>(&self) -> [u8; 2] {
        const { assert!(I + 2 <= N) };
        // SAFETY: I + 2 <= N and the header is in bounds.
        unsafe { core::ptr::read_unaligned(self.at.add(I).cast::<u16>()) }.to_ne_bytes()
    }
    /// The four bytes at `I`, in packet order (addresses).
    #[inline(always)]
    pub fn quad<const I: usize>(&self) -> [u8; 4] {
        const { assert!(I + 4 <= N) };
        // SAFETY: I + 4 <= N and the header is in bounds.
        unsafe { core::ptr::read_unaligned(self.at.add(I).cast::<u32>()) }.to_ne_bytes()
    }
}

impl Packet for [u8] {
    #[inline(always)]
    fn header<const N: usize>(&self, offset: usize) -> Result<Header<'_, N>, ParseError> {
        let end = offset.checked_add(N).ok_or(ParseError::Truncated)?;
        let bytes = self.get(offset..end).ok_or(ParseError::Truncated)?;
        // SAFETY: `bytes` is N readable bytes borrowed for the header's lifetime.
        Ok(unsafe { Header::new(bytes.as_ptr()) })
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
    Ipv4,
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
    /// ICMP or ICMPv6 type.
    pub icmp_type: u8,
    /// IPv6 only: the destination is link-local (fe80::/10) or multicast (ff00::/8), where a
    /// sandbox reaches the host itself.
    pub dst_link6: bool,
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
}

/// Parses Ethernet (with up to two VLAN tags), IPv4 (with options) or IPv6, and the first bytes
/// of TCP or UDP.
#[inline(always)]
pub fn parse<P: Packet + ?Sized>(p: &P) -> Summary {
    parse_frame(p).unwrap_or_default()
}

/// [`parse`], telling a packet whose headers run past what `p` holds (or are malformed) apart:
/// a socket buffer is parsed from its linear bytes first, and made linear further only then.
#[inline(always)]
pub fn try_parse<P: Packet + ?Sized>(p: &P) -> Result<Summary, ParseError> {
    parse_frame(p)
}

#[inline(always)]
fn parse_frame<P: Packet + ?Sized>(p: &P) -> Result<Summary, ParseError> {
    let mut ethertype = p.header::<ETH_HLEN>(0)?.be16::<12>();
    let mut off = ETH_HLEN;
    // Two unrolled VLAN steps (802.1ad outer, 802.1Q inner): no loop for the verifier.
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        ethertype = p.header::<VLAN_HLEN>(off)?.be16::<2>();
        off += VLAN_HLEN;
        if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
            ethertype = p.header::<VLAN_HLEN>(off)?.be16::<2>();
            off += VLAN_HLEN;
        }
    }
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(p, off),
        ETH_P_IPV6 => parse_ipv6(p, off),
        _ => Ok(Summary { net: Net::NonIp, ..Summary::default() }),
    }
}

#[inline(always)]
fn parse_ipv4<P: Packet + ?Sized>(p: &P, off: usize) -> Result<Summary, ParseError> {
    let ip = p.header::<20>(off)?;
    let vihl = ip.u8::<0>();
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(ParseError::Truncated);
    }
    let mut s = Summary { net: Net::Ipv4, src: ip.quad::<12>(), dst: ip.quad::<16>(), ..Summary::default() };
    if ip.be16::<6>() & 0x1fff != 0 {
        s.transport = Transport::Fragment;
        return Ok(s);
    }
    parse_l4(p, off + (vihl & 0x0f) as usize * 4, ip.u8::<9>(), s)
}

#[inline(always)]
fn parse_ipv6<P: Packet + ?Sized>(p: &P, off: usize) -> Result<Summary, ParseError> {
    let ip = p.header::<40>(off)?;
    if ip.u8::<0>() >> 4 != 6 {
        return Err(ParseError::Truncated);
    }
    let (d0, d1) = (ip.u8::<24>(), ip.u8::<25>());
    let dst_link6 = d0 == 0xff || (d0 == 0xfe && d1 & 0xc0 == 0x80);
    parse_l4(p, off + 40, ip.u8::<6>(), Summary { net: Net::Ipv6, dst_link6, ..Summary::default() })
}

#[inline(always)]
fn parse_l4<P: Packet + ?Sized>(p: &P, off: usize, proto: u8, mut s: Summary) -> Result<Summary, ParseError> {
    match proto {
        IPPROTO_TCP => {
            let tcp = p.header::<20>(off)?;
            if tcp.u8::<12>() >> 4 < 5 {
                return Err(ParseError::Truncated);
            }
            s.transport = Transport::Tcp;
            s.sport = tcp.pair::<0>();
            s.dport = tcp.pair::<2>();
            s.tcp_flags = tcp.u8::<13>();
        }
        IPPROTO_UDP => {
            let udp = p.header::<8>(off)?;
            s.transport = Transport::Udp;
            s.sport = udp.pair::<0>();
            s.dport = udp.pair::<2>();
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Type and code (4 bytes: the checked read needs N >= 2, see `Packet`).
            s.icmp_type = p.header::<4>(off)?.u8::<0>();
            s.transport = Transport::Icmp;
        }
        _ => s.transport = Transport::Other,
    }
    Ok(s)
}
