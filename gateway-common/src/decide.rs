//! The verdict of each program, as pure functions of a parsed packet and map lookups.
//!
//! The eBPF programs are thin wrappers: parse, call one of these, count, return. The host tests
//! below (and the fuzz target) drive the very same functions with hand-made packets.

use crate::counters::Reason;
use crate::parse::{Net, Summary, Transport};
use crate::policy::{Endpoint, PortKey, SYN_TOKEN, SandboxRecord, SynBucket, UdpFlowKey, allow};
use crate::{IPPROTO_TCP, IPPROTO_UDP, SANDBOX_API_PORT, SANDBOX_NEVER_PORT, SANDBOX_SYSTEM_PORT};

/// Map lookups a decision may need. Implemented over eBPF maps in the kernel and over plain
/// collections in host tests.
pub trait Lookups {
    /// `MAP_CONFIG[0].mark`; zero when the gateway never configured the data plane.
    fn gateway_mark(&self) -> u32;
    /// `MAP_SANDBOXES[addr]`.
    fn sandbox(&self, addr: [u8; 4]) -> SandboxLookup;
    /// `MAP_POLICY[key].allow_from`, or 0 when there is no entry. When it is
    /// `allow::FROM_GATEWAY` the caller admits the connection, so the kernel implementation also
    /// counts it on the entry (one lookup for both).
    ///
    /// Lookups return plain values, not `Option`s of small payloads: LLVM lowers a `None` payload
    /// to an undefined register, which the verifier refuses to read.
    fn policy_admit(&self, key: &Endpoint) -> u8;
    /// Whether `MAP_PROTECTED` holds `key`.
    fn protected(&self, key: &Endpoint) -> bool;
    /// Whether some `MAP_PROTECTED` key may have this port and protocol (`MAP_PROTECTED_PORTS`,
    /// a bitmap in an array: one inlined array read instead of two hash lookups for the
    /// packets that cannot be protected). `false` must mean "no key has it"; the default,
    /// `true`, always asks [`Lookups::protected`].
    fn protected_port(&self, port: u16, proto: u8) -> bool {
        let _ = (port, proto);
        true
    }
    /// Whether `addr` is a registered sandbox, for new flows into it. The default asks
    /// [`Lookups::sandbox`]; the kernel asks `MAP_SANDBOX_STATS` first (userspace keeps a
    /// counter entry only while the sandbox record exists), which also finds the counters
    /// to bump: one lookup instead of two.
    fn registered(&self, addr: [u8; 4]) -> bool {
        self.sandbox(addr).found
    }
    /// Whether `MAP_PUBLIC_PORTS` holds `key`.
    fn public_port(&self, key: &PortKey) -> bool;
    /// Whether `MAP_UDP_FLOWS` holds `key`.
    fn udp_flow(&self, key: &UdpFlowKey) -> bool;
    /// Whether `MAP_HOST_ADDRS` holds `addr`.
    fn host_addr(&self, addr: [u8; 4]) -> bool;
    /// Whether `MAP_HOST_ALLOW` holds `key`.
    fn host_allowed(&self, key: &PortKey) -> bool;
    /// Whether one more new connection from `src` fits the per-source rate limit
    /// (`MAP_EDGE_CONFIG`'s `syn_rate` and `syn_burst`). The kernel takes a token from the
    /// source's `MAP_SYN_RATE` bucket with [`syn_admit`] (a new source starts full); with no
    /// rate configured it asks no map. The default: no limit.
    fn syn_admit(&self, src: [u8; 4]) -> bool {
        let _ = src;
        true
    }
    /// Whether `MAP_L4_PORTS` has `port`: an L4 port exposed now.
    fn l4_port(&self, port: u16) -> bool;
    /// Whether `MAP_L4_ALLOW` has a prefix of `port` that covers `src`.
    fn l4_allowed(&self, port: u16, src: [u8; 4]) -> bool;
}

/// The result of a `MAP_SANDBOXES` lookup (fully initialised on a miss, see `Lookups`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SandboxLookup {
    /// Whether the address is a registered sandbox.
    pub found: bool,
    /// Its recorded host-side ifindex (0 on a miss).
    pub ifindex: u32,
}

impl SandboxLookup {
    /// A hit.
    pub const fn hit(rec: SandboxRecord) -> Self {
        Self { found: true, ifindex: rec.ifindex }
    }
    pub const MISS: Self = Self { found: false, ifindex: 0 };
}

/// A decision: why, which sandbox it concerns, any UDP flow to remember and the L4 port to count
/// it on. Plain fields, no `Option`s (see `parse` for why).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The reason, which also tells pass or drop.
    pub reason: Reason,
    /// Whether a registered sandbox's new flow was judged and is not yet counted on a policy
    /// entry (for the per-sandbox counters).
    pub for_sandbox: bool,
    /// That sandbox's address.
    pub sandbox: [u8; 4],
    /// Whether `udp_flow` should be remembered, so that its replies come back in.
    pub remember_udp: bool,
    /// A UDP flow the sandbox started.
    pub udp_flow: UdpFlowKey,
    /// The edge guard's new IPv4 connections that count on the port's `MAP_L4_PORTS` entry:
    /// the destination port of `PassEdgeL4`, `DropEdgeNotAllowed` and `DropEdgeRate` (counted
    /// there only if the port is exposed; a rate drop to another port counts in the verdict
    /// counters alone); 0 for every other verdict.
    pub l4_port: u16,
}

impl Verdict {
    const fn of(reason: Reason) -> Self {
        Self {
            reason,
            for_sandbox: false,
            sandbox: [0; 4],
            remember_udp: false,
            udp_flow: UdpFlowKey { sandbox: [0; 4], peer: [0; 4], sandbox_port: [0; 2], peer_port: [0; 2] },
            l4_port: 0,
        }
    }
    const fn on_l4_port(reason: Reason, port: u16) -> Self {
        let mut v = Self::of(reason);
        v.l4_port = port;
        v
    }
    const fn about(reason: Reason, addr: [u8; 4]) -> Self {
        let mut v = Self::of(reason);
        v.for_sandbox = true;
        v.sandbox = addr;
        v
    }
}

/// Traffic going INTO a sandbox (tcx egress of its host-side interface). `mark` is `skb->mark`.
#[inline(always)]
pub fn into_sandbox<L: Lookups>(s: Summary, mark: u32, maps: &L) -> Verdict {
    match s.net {
        Net::Malformed => return Verdict::of(Reason::DropMalformed),
        Net::NonIp => return Verdict::of(Reason::PassNonIp),
        Net::Ipv6 => {
            return Verdict::of(match s.transport {
                Transport::Icmp => Reason::PassIcmp,
                Transport::Tcp if !s.is_new_tcp() => Reason::PassEstablished,
                _ => Reason::DropIpv6,
            });
        }
        Net::Ipv4 => {}
    }
    match s.transport {
        Transport::Icmp => Verdict::of(Reason::PassIcmp),
        Transport::Fragment => Verdict::of(Reason::PassFragment),
        Transport::Tcp => {
            if !s.is_new_tcp() {
                return Verdict::of(Reason::PassEstablished);
            }
            let port = s.dest_port();
            let gateway = maps.gateway_mark();
            let from_gateway = gateway != 0 && mark == gateway;
            let builtin = port == SANDBOX_API_PORT || port == SANDBOX_SYSTEM_PORT || port == SANDBOX_NEVER_PORT;
            // The common case first, in one lookup: the gateway opening an allowed port. Policy
            // entries exist only for registered sandboxes (userspace removes them before the
            // sandbox record).
            if from_gateway
                && !builtin
                && maps.policy_admit(&Endpoint::new(s.dst, port, IPPROTO_TCP)) == allow::FROM_GATEWAY
            {
                return Verdict::of(Reason::PassAllowed);
            }
            if !maps.registered(s.dst) {
                return Verdict::of(Reason::DropUnknownSandbox);
            }
            let reason = if port == SANDBOX_NEVER_PORT {
                Reason::DropReservedPort
            } else if !from_gateway {
                Reason::DropNotFromGateway
            } else if builtin {
                Reason::PassSandboxApi
            } else {
                Reason::DropPortClosed
            };
            Verdict::about(reason, s.dst)
        }
        Transport::Udp => {
            let reply = UdpFlowKey { sandbox: s.dst, peer: s.src, sandbox_port: s.dport, peer_port: s.sport };
            if maps.udp_flow(&reply) { Verdict::of(Reason::PassUdpReply) } else { Verdict::of(Reason::DropUdp) }
        }
        Transport::Other | Transport::None => Verdict::of(Reason::DropProtocol),
    }
}

/// Traffic coming OUT of a sandbox (tcx ingress of its host-side interface, whose index is
/// `ifindex`).
#[inline(always)]
pub fn out_of_sandbox<L: Lookups>(s: Summary, ifindex: u32, maps: &L) -> Verdict {
    match s.net {
        Net::Malformed => return Verdict::of(Reason::DropMalformed),
        Net::NonIp => return Verdict::of(Reason::PassNonIp),
        Net::Ipv6 => {
            // No sandbox has an IPv6 address yet and no IPv6 host address is tracked: the
            // wildcard protected sockets apply, and the host is reached on link-local and
            // multicast destinations.
            return match dest(&s) {
                Some((proto, port))
                    if maps.protected_port(port, proto) && maps.protected(&Endpoint::new([0; 4], port, proto)) =>
                {
                    Verdict::of(Reason::DropProtected)
                }
                _ if s.dst_link6 && opens_flow(&s) => host_allow(&s, maps),
                _ => Verdict::of(Reason::PassOut),
            };
        }
        Net::Ipv4 => {}
    }
    let from = maps.sandbox(s.src);
    if from.found && from.ifindex != ifindex {
        return Verdict::of(Reason::DropSpoofed);
    }
    if s.dst != s.src && maps.sandbox(s.dst).found {
        return Verdict::of(Reason::DropSandboxToSandbox);
    }
    if let Some((proto, port)) = dest(&s)
        && maps.protected_port(port, proto)
        && (maps.protected(&Endpoint::new(s.dst, port, proto)) || maps.protected(&Endpoint::new([0; 4], port, proto)))
    {
        return Verdict::of(Reason::DropProtected);
    }
    let mut v = Verdict::of(Reason::PassOut);
    // Established TCP (the bulk) costs no lookup here. A connection the host or the gateway
    // opened into the sandbox only sends SYN+ACK and ACKs back, so it is never judged new.
    if opens_flow(&s) && is_host(s.dst, maps) {
        let h = host_allow(&s, maps);
        if h.reason.is_drop() {
            return h;
        }
        v.reason = h.reason;
    }
    if s.transport == Transport::Udp {
        v.remember_udp = true;
        v.udp_flow = UdpFlowKey { sandbox: s.src, peer: s.dst, sandbox_port: s.sport, peer_port: s.dport };
    }
    v
}

/// New inbound connections on the public interface (XDP).
///
/// A new IPv4 TCP connection (SYN without ACK) is judged in this order: a public port, else an
/// exposed L4 port and its allow-list, else the port is closed; a SYN that would pass then
/// takes a token of its source's rate limit (every port, HTTPS included). Dropping first what
/// would be dropped anyway keeps the per-source buckets to sources that may connect: a flood
/// to closed ports, or from outside an allow-list, costs no bucket lookup and, with spoofed
/// sources, evicts no legitimate source's bucket. IPv6 has no rate limit and no L4 ports (L4
/// exposure is IPv4 only): a public port or closed.
#[inline(always)]
pub fn edge_guard<L: Lookups>(s: Summary, maps: &L) -> Verdict {
    match s.net {
        Net::Malformed => Verdict::of(Reason::PassEdgeMalformed),
        Net::NonIp => Verdict::of(Reason::PassNonIp),
        Net::Ipv4 if s.is_new_tcp() => {
            let port = s.dest_port();
            let pass = if maps.public_port(&PortKey::new(port, IPPROTO_TCP)) {
                Verdict::of(Reason::PassEdgePublic)
            } else if maps.l4_port(port) {
                if !maps.l4_allowed(port, s.src) {
                    return Verdict::on_l4_port(Reason::DropEdgeNotAllowed, port);
                }
                Verdict::on_l4_port(Reason::PassEdgeL4, port)
            } else {
                return Verdict::of(Reason::DropEdgeClosedPort);
            };
            if maps.syn_admit(s.src) { pass } else { Verdict::on_l4_port(Reason::DropEdgeRate, port) }
        }
        Net::Ipv6 if s.is_new_tcp() => {
            if maps.public_port(&PortKey::new(s.dest_port(), IPPROTO_TCP)) {
                Verdict::of(Reason::PassEdgePublic)
            } else {
                Verdict::of(Reason::DropEdgeClosedPort)
            }
        }
        Net::Ipv4 | Net::Ipv6 => Verdict::of(Reason::PassEdgeOther),
    }
}

/// The per-source token bucket of the edge guard: whether one more new connection fits, taking
/// its token if so. The bucket holds at most `burst` connections (at least 1) and refills at
/// `rate` per second; `rate` 0 means no limit. A source seen for the first time starts with
/// [`SynBucket::full`].
///
/// Integer arithmetic only, for the verifier and `no_std`: no float, no division, no overflow
/// for any input (the refill saturates), and a clock that goes backwards refills nothing (the
/// bucket keeps its later time) rather than wrapping.
#[inline(always)]
pub fn syn_admit(bucket: &mut SynBucket, now_ns: u64, rate: u32, burst: u32) -> bool {
    if rate == 0 {
        return true;
    }
    let capacity = SynBucket::capacity(burst);
    if now_ns > bucket.last_ns {
        // `rate` connections per second is `rate` token units per nanosecond.
        let refill = mul_saturating(now_ns - bucket.last_ns, rate);
        let sum = bucket.tokens.wrapping_add(refill);
        let sum = if sum < refill { u64::MAX } else { sum };
        bucket.tokens = if sum > capacity { capacity } else { sum };
        bucket.last_ns = now_ns;
    } else if bucket.tokens > capacity {
        // The burst was lowered since the bucket filled.
        bucket.tokens = capacity;
    }
    if bucket.tokens >= SYN_TOKEN {
        bucket.tokens -= SYN_TOKEN;
        true
    } else {
        false
    }
}

/// `a * b`, or `u64::MAX` if it does not fit, from two 32×32-bit products (a 64×64-bit
/// overflow check would need a 128-bit multiply, which the BPF target cannot call).
#[inline(always)]
const fn mul_saturating(a: u64, b: u32) -> u64 {
    let b = b as u64;
    let low = (a & 0xffff_ffff) * b; // < 2^64
    let high = (a >> 32) * b; // < 2^64
    if high >> 32 != 0 {
        return u64::MAX;
    }
    let sum = (high << 32).wrapping_add(low);
    if sum < low { u64::MAX } else { sum }
}

/// Whether a packet leaving a sandbox may open a flow on the host, rather than answer one the
/// host opened: a TCP SYN; any UDP (`sandbox_in` lets UDP into a sandbox only as a reply to a
/// flow the sandbox started, so the host has no UDP flow a sandbox could be answering); ICMP
/// other than an echo reply or an error about a packet the host sent; any other protocol (no
/// state to tell). Non-first fragments pass: the kernel drops them unless it already has the
/// first fragment, which was judged.
#[inline(always)]
fn opens_flow(s: &Summary) -> bool {
    match s.transport {
        Transport::Tcp => s.is_new_tcp(),
        // ICMPv6 also carries neighbour discovery and MLD, which the link needs: only its
        // queries (echo request, node information query) are new.
        Transport::Icmp if s.net == Net::Ipv6 => matches!(s.icmp_type, ICMPV6_ECHO_REQUEST | ICMPV6_NODE_INFO_QUERY),
        Transport::Icmp => {
            !matches!(s.icmp_type, ICMP_ECHO_REPLY | ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM)
        }
        Transport::Fragment => false,
        Transport::Udp | Transport::Other | Transport::None => true,
    }
}

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROBLEM: u8 = 12;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_NODE_INFO_QUERY: u8 = 139;

/// A new flow to the host: allowed when `MAP_HOST_ALLOW` has its port (TCP and UDP only).
#[inline(always)]
fn host_allow<L: Lookups>(s: &Summary, maps: &L) -> Verdict {
    let allowed = match dest(s) {
        Some((proto, port)) => maps.host_allowed(&PortKey::new(port, proto)),
        None => false,
    };
    Verdict::of(if allowed { Reason::PassHostAllowed } else { Reason::DropHost })
}

/// Whether the host itself receives a packet sent to `addr`: one of its addresses, or
/// multicast, limited broadcast and the reserved 240.0.0.0/4 (first octet 224 and up), which
/// the host delivers to its own sockets and never forwards for a sandbox.
#[inline(always)]
fn is_host<L: Lookups>(addr: [u8; 4], maps: &L) -> bool {
    addr[0] >= 224 || maps.host_addr(addr)
}

#[inline(always)]
fn dest(s: &Summary) -> Option<(u8, u16)> {
    match s.transport {
        Transport::Tcp => Some((IPPROTO_TCP, s.dest_port())),
        Transport::Udp => Some((IPPROTO_UDP, s.dest_port())),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
