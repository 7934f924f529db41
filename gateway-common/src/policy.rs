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
