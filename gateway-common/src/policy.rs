//! Map keys and values shared with the kernel.
//!
//! Rules for every type here: `#[repr(C)]`, fixed-width integers or byte arrays only, explicit
//! `_pad` fields that are always zero (hash maps compare keys byte by byte), and a size assertion.

/// (IPv4 address, port, protocol): key of `MAP_POLICY` and `MAP_PROTECTED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Endpoint {
    /// IPv4 address, network order. `0.0.0.0` in `MAP_PROTECTED` means "any host address".
    pub addr: [u8; 4],
    /// Port, network order.
    pub port: [u8; 2],
    /// IP protocol number (`IPPROTO_TCP`, `IPPROTO_UDP`).
    pub proto: u8,
    /// Always zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<Endpoint>() == 8);

impl Endpoint {
    /// A key with zeroed padding.
    pub const fn new(addr: [u8; 4], port: u16, proto: u8) -> Self {
        Self { addr, port: port.to_be_bytes(), proto, _pad: 0 }
    }
    /// The port in host order.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// Who may open a new flow to a policy entry.
pub mod allow {
    /// Only sockets carrying the gateway's `SO_MARK`.
    pub const FROM_GATEWAY: u8 = 1;
}

/// Why a policy entry exists (bit flags; an entry may exist for several reasons).
pub mod origin {
    /// Declared in the sandbox registration (`ports`).
    pub const DECLARED: u8 = 1 << 0;
    /// Opened on demand by one or more previews.
    pub const PREVIEW: u8 = 1 << 1;
}

/// Value of `MAP_POLICY`: the rule (written by userspace) and a counter of the connections it
/// admitted (incremented by the program), so that the common case, an admitted connection, costs
/// one map lookup. (A per-CPU map would make the counter exact but makes every insert allocate
/// per-CPU memory: ~30 µs per entry instead of ~1 µs.)
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PolicyValue {
    /// One of [`allow`].
    pub allow_from: u8,
    /// Bit set of [`origin`].
    pub origin: u8,
    /// Always zero.
    pub _pad: [u8; 2],
    /// How many previews hold this entry open (informational; userspace owns the count).
    pub preview_refs: u32,
    /// New connections this entry admitted (reset when userspace rewrites the entry).
    pub admitted: u64,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 16);

impl PolicyValue {
    /// An entry allowing the gateway only.
    pub const fn gateway(origin: u8, preview_refs: u32) -> Self {
        Self { allow_from: allow::FROM_GATEWAY, origin, _pad: [0; 2], preview_refs, admitted: 0 }
    }
}

/// Key of `MAP_SANDBOXES` and `MAP_SANDBOX_STATS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct SandboxKey {
    /// IPv4 address, network order.
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<SandboxKey>() == 4);

/// Key of `MAP_HOST_ADDRS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct HostAddr {
    /// IPv4 address, network order.
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<HostAddr>() == 4);

/// Value of `MAP_SANDBOXES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SandboxRecord {
    /// ifindex of the sandbox's host-side interface (anti-spoofing on the way out).
    pub ifindex: u32,
    /// Reserved, zero.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<SandboxRecord>() == 8);

/// Value of the per-CPU `MAP_SANDBOX_STATS`: new flows towards one sandbox.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SandboxStats {
    /// New connections let in.
    pub allowed: u64,
    /// New connections dropped.
    pub dropped: u64,
}
const _: () = assert!(core::mem::size_of::<SandboxStats>() == 16);

/// Key of `MAP_PUBLIC_PORTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PortKey {
    /// Port, network order.
    pub port: [u8; 2],
    /// IP protocol number.
    pub proto: u8,
    /// Always zero.
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PortKey>() == 4);

impl PortKey {
    /// A key with zeroed padding.
    pub const fn new(port: u16, proto: u8) -> Self {
        Self { port: port.to_be_bytes(), proto, _pad: 0 }
    }
    /// The port in host order.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
}

/// Value of `MAP_PROTECTED_PORTS`: 64 ports per protocol, bit `port % 64` of slot `port / 64`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct PortBits {
    /// TCP ports.
    pub tcp: u64,
    /// UDP ports.
    pub udp: u64,
}
const _: () = assert!(core::mem::size_of::<PortBits>() == 16);

impl PortBits {
    /// The slot holding `port`.
    pub const fn slot(port: u16) -> u32 {
        (port >> 6) as u32
    }
    /// Whether `port`/`proto` is set (`port` must belong to this slot).
    #[inline(always)]
    pub const fn has(&self, port: u16, proto: u8) -> bool {
        let word = if proto == crate::IPPROTO_TCP {
            self.tcp
        } else if proto == crate::IPPROTO_UDP {
            self.udp
        } else {
            0
        };
        (word >> (port & 63)) & 1 != 0
    }
    /// Sets `port`/`proto` (other protocols are ignored: only TCP and UDP are protected).
    pub const fn set(&mut self, port: u16, proto: u8) {
        let bit = 1u64 << (port & 63);
        if proto == crate::IPPROTO_TCP {
            self.tcp |= bit;
        } else if proto == crate::IPPROTO_UDP {
            self.udp |= bit;
        }
    }
}

/// Key of `MAP_UDP_FLOWS`: a UDP flow as seen leaving the sandbox.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct UdpFlowKey {
    /// The sandbox's address.
    pub sandbox: [u8; 4],
    /// The peer's address.
    pub peer: [u8; 4],
    /// The sandbox's port.
    pub sandbox_port: [u8; 2],
    /// The peer's port.
    pub peer_port: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<UdpFlowKey>() == 12);

/// `MAP_CONFIG[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct KernelConfig {
    /// The `SO_MARK` identifying the gateway's sockets. Zero: nothing is from the gateway.
    pub mark: u32,
    /// Reserved, zero.
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<KernelConfig>() == 8);

/// The data of a `MAP_L4_ALLOW` key (an LPM trie key is this, after a `u32` prefix length):
/// an exposed L4 port and a source prefix. An allow-list entry's prefix length is
/// [`L4AllowKey::prefix_len`] of its CIDR length, so the port and the padding always match
/// whole and only the address is matched by prefix; a lookup uses
/// [`L4AllowKey::LOOKUP_PREFIX_LEN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct L4AllowKey {
    /// The exposed port, network order.
    pub port: [u8; 2],
    /// Always zero (matched as part of the prefix).
    pub _pad: [u8; 2],
    /// The source address (an allow-list entry: its prefix, host bits zero), network order.
    pub addr: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<L4AllowKey>() == 8);

impl L4AllowKey {
    /// The prefix length of a lookup: the port, the padding and the whole address.
    pub const LOOKUP_PREFIX_LEN: u32 = 64;

    /// A key with zeroed padding.
    pub const fn new(port: u16, addr: [u8; 4]) -> Self {
        Self { port: port.to_be_bytes(), _pad: [0; 2], addr }
    }
    /// The port in host order.
    pub const fn port(&self) -> u16 {
        u16::from_be_bytes(self.port)
    }
    /// The LPM prefix length of an allow-list entry for a CIDR of `cidr_bits` (0 allows every
    /// source; more than 32 is taken as 32): the 32 bits of port and padding, then the address's.
    pub const fn prefix_len(cidr_bits: u8) -> u32 {
        32 + if cidr_bits > 32 { 32 } else { cidr_bits as u32 }
    }
    /// The CIDR length of an entry's prefix length (the inverse of [`L4AllowKey::prefix_len`];
    /// `None` for a prefix length no entry has).
    pub const fn cidr_bits(prefix_len: u32) -> Option<u8> {
        if prefix_len >= 32 && prefix_len <= 64 { Some((prefix_len - 32) as u8) } else { None }
    }
}

/// Value of the per-CPU `MAP_L4_PORTS`: new connections to one exposed L4 port (userspace sums
/// the CPUs).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct L4PortStats {
    /// SYNs from an allowed source, let through.
    pub syn_pass: u64,
    /// SYNs from a source outside the port's allow-list, dropped.
    pub drop_not_allowed: u64,
    /// SYNs over the per-source rate, dropped.
    pub drop_rate: u64,
}
const _: () = assert!(core::mem::size_of::<L4PortStats>() == 24);

/// One new TCP connection in a [`SynBucket`]: tokens are counted in billionths, so that refilling
/// `rate` connections per second adds exactly `rate` units per elapsed nanosecond (no division).
pub const SYN_TOKEN: u64 = 1_000_000_000;

/// Value of `MAP_SYN_RATE`: one source's token bucket (see `decide::syn_admit`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SynBucket {
    /// Tokens left, in units of 1/[`SYN_TOKEN`] connection.
    pub tokens: u64,
    /// When the bucket was last refilled (`bpf_ktime_get_ns`, monotonic since boot).
    pub last_ns: u64,
}
const _: () = assert!(core::mem::size_of::<SynBucket>() == 16);

impl SynBucket {
    /// The bucket of a source seen for the first time: full (`burst` connections, at least 1).
    pub const fn full(burst: u32, now_ns: u64) -> Self {
        Self { tokens: SynBucket::capacity(burst), last_ns: now_ns }
    }
    /// The most a bucket holds: `burst` connections (at least 1, so that a configured rate
    /// never blocks every connection), in token units. At most ~4.3e18: no overflow.
    pub const fn capacity(burst: u32) -> u64 {
        let burst = if burst == 0 { 1 } else { burst as u64 };
        burst * SYN_TOKEN
    }
}

/// `MAP_EDGE_CONFIG[0]`: the edge guard's rate limit and the L4 steering of `l4_steer`.
/// All zero (the state before a gateway writes it): no rate limit, nothing steered.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EdgeConfig {
    /// New TCP connections per second per source address; 0 = no limit.
    pub syn_rate: u32,
    /// How many new connections a source may open at once (the bucket's size).
    pub syn_burst: u32,
    /// The address L4 ports are steered on, network order; `0.0.0.0` = any local address.
    pub l4_addr: [u8; 4],
    /// The first port of the L4 range (host order); 0 = L4 steering off.
    pub l4_port_lo: u16,
    /// The last port of the L4 range, inclusive (host order).
    pub l4_port_hi: u16,
}
const _: () = assert!(core::mem::size_of::<EdgeConfig>() == 16);

impl EdgeConfig {
    /// Whether a new connection to `addr:port` (local address and port) lies where L4 ports are
    /// steered: steering on, `port` in the range, `addr` the steered address (or any).
    #[inline(always)]
    pub const fn in_l4_range(&self, addr: [u8; 4], port: u16) -> bool {
        let any = u32::from_ne_bytes(self.l4_addr) == 0;
        self.l4_port_lo != 0
            && port >= self.l4_port_lo
            && port <= self.l4_port_hi
            && (any || u32::from_ne_bytes(self.l4_addr) == u32::from_ne_bytes(addr))
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `repr(C)`, contain only integers and byte arrays, and have no
    // implicit padding (size asserted above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::Endpoint {}
    unsafe impl aya::Pod for super::PolicyValue {}
    unsafe impl aya::Pod for super::SandboxKey {}
    unsafe impl aya::Pod for super::HostAddr {}
    unsafe impl aya::Pod for super::SandboxRecord {}
    unsafe impl aya::Pod for super::SandboxStats {}
    unsafe impl aya::Pod for super::PortKey {}
    unsafe impl aya::Pod for super::PortBits {}
    unsafe impl aya::Pod for super::UdpFlowKey {}
    unsafe impl aya::Pod for super::KernelConfig {}
    unsafe impl aya::Pod for super::L4AllowKey {}
    unsafe impl aya::Pod for super::L4PortStats {}
    unsafe impl aya::Pod for super::SynBucket {}
    unsafe impl aya::Pod for super::EdgeConfig {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{align_of, offset_of, size_of};

    #[test]
    fn layouts_are_what_the_kernel_expects() {
        assert_eq!((size_of::<Endpoint>(), align_of::<Endpoint>()), (8, 1));
        assert_eq!(offset_of!(Endpoint, port), 4);
        assert_eq!(offset_of!(Endpoint, proto), 6);
        assert_eq!((size_of::<PolicyValue>(), align_of::<PolicyValue>()), (16, 8));
        assert_eq!(offset_of!(PolicyValue, preview_refs), 4);
        assert_eq!(offset_of!(PolicyValue, admitted), 8);
        assert_eq!(offset_of!(SandboxRecord, flags), 4);
        assert_eq!(offset_of!(SandboxStats, dropped), 8);
        assert_eq!(offset_of!(UdpFlowKey, sandbox_port), 8);
        assert_eq!(offset_of!(PortKey, proto), 2);
        assert_eq!(offset_of!(PortBits, udp), 8);
        assert_eq!((size_of::<L4AllowKey>(), align_of::<L4AllowKey>()), (8, 1));
        assert_eq!(offset_of!(L4AllowKey, addr), 4);
        assert_eq!((size_of::<L4PortStats>(), align_of::<L4PortStats>()), (24, 8));
        assert_eq!(offset_of!(L4PortStats, drop_rate), 16);
        assert_eq!(offset_of!(SynBucket, last_ns), 8);
        assert_eq!((size_of::<EdgeConfig>(), align_of::<EdgeConfig>()), (16, 4));
        assert_eq!(offset_of!(EdgeConfig, l4_addr), 8);
        assert_eq!(offset_of!(EdgeConfig, l4_port_lo), 12);
        assert_eq!(offset_of!(EdgeConfig, l4_port_hi), 14);
    }

    #[test]
    fn l4_allow_keys_match_the_port_whole_and_the_address_by_prefix() {
        let k = L4AllowKey::new(20001, [198, 18, 4, 0]);
        assert_eq!((k.port, k._pad, k.port()), ([0x4e, 0x21], [0, 0], 20001));
        assert_eq!(L4AllowKey::prefix_len(0), 32, "/0: every source, this port only");
        assert_eq!(L4AllowKey::prefix_len(24), 56);
        assert_eq!(L4AllowKey::prefix_len(32), L4AllowKey::LOOKUP_PREFIX_LEN);
        assert_eq!(L4AllowKey::prefix_len(200), 64);
        for bits in 0..=32 {
            assert_eq!(L4AllowKey::cidr_bits(L4AllowKey::prefix_len(bits)), Some(bits));
        }
        assert_eq!(L4AllowKey::cidr_bits(31), None);
        assert_eq!(L4AllowKey::cidr_bits(65), None);
    }

    #[test]
    fn the_l4_range_is_inclusive_and_off_when_lo_is_zero() {
        let cfg = EdgeConfig { l4_addr: [198, 18, 0, 1], l4_port_lo: 20000, l4_port_hi: 20009, ..Default::default() };
        assert!(cfg.in_l4_range([198, 18, 0, 1], 20000));
        assert!(cfg.in_l4_range([198, 18, 0, 1], 20009));
        assert!(!cfg.in_l4_range([198, 18, 0, 1], 19999));
        assert!(!cfg.in_l4_range([198, 18, 0, 1], 20010));
        assert!(!cfg.in_l4_range([198, 18, 0, 2], 20001), "another local address");
        let any = EdgeConfig { l4_addr: [0; 4], ..cfg };
        assert!(any.in_l4_range([127, 0, 0, 1], 20001), "0.0.0.0: every local address");
        let off = EdgeConfig { l4_port_lo: 0, l4_port_hi: 65535, ..any };
        assert!(!off.in_l4_range([198, 18, 0, 1], 20001), "lo = 0: steering off");
        assert!(!EdgeConfig::default().in_l4_range([0; 4], 0));
    }

    #[test]
    fn constructors_zero_padding_and_use_network_order() {
        let e = Endpoint::new([198, 18, 0, 2], 3000, crate::IPPROTO_TCP);
        assert_eq!(e.port, [0x0b, 0xb8]);
        assert_eq!(e.port(), 3000);
        assert_eq!(e._pad, 0);
        let p = PortKey::new(443, crate::IPPROTO_TCP);
        assert_eq!((p.port, p._pad, p.port()), ([1, 0xbb], 0, 443));
        assert_eq!(PolicyValue::gateway(origin::DECLARED, 0)._pad, [0, 0]);
    }
}
