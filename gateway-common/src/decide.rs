//! The verdict of each program, as pure functions of a parsed packet and map lookups.
//!
//! The eBPF programs are thin wrappers: parse, call one of these, count, return. The host tests
//! below (and the fuzz target) drive the very same functions with hand-made packets.

use crate::counters::Reason;
use crate::parse::{L4, ParseError, Summary};
use crate::policy::{Endpoint, PortKey, SandboxRecord, UdpFlowKey, allow};
use crate::{IPPROTO_TCP, IPPROTO_UDP, SANDBOX_API_PORT, SANDBOX_NEVER_PORT, SANDBOX_SYSTEM_PORT};

/// Map lookups a decision may need. Implemented over eBPF maps in the kernel and over plain
/// collections in host tests.
pub trait Lookups {
    /// `MAP_CONFIG[0].mark`; zero when the gateway never configured the data plane.
    fn gateway_mark(&self) -> u32;
    /// `MAP_SANDBOXES[addr]`.
    fn sandbox(&self, addr: [u8; 4]) -> SandboxLookup;
    /// `MAP_POLICY[key].allow_from`, or 0 when there is no entry.
    ///
    /// Lookups return plain values, not `Option`s of small payloads: LLVM lowers a `None` payload
    /// to an undefined register, which the verifier refuses to read.
    fn policy_allow(&self, key: &Endpoint) -> u8;
    /// Whether `MAP_PROTECTED` holds `key`.
    fn protected(&self, key: &Endpoint) -> bool;
    /// Whether `MAP_PUBLIC_PORTS` holds `key`.
    fn public_port(&self, key: &PortKey) -> bool;
    /// Whether `MAP_UDP_FLOWS` holds `key`.
    fn udp_flow(&self, key: &UdpFlowKey) -> bool;
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
    /// A miss.
    pub const MISS: Self = Self { found: false, ifindex: 0 };
}

/// A decision: why, and which sandbox it concerns (for per-sandbox counters).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// The reason, which also tells pass or drop.
    pub reason: Reason,
    /// The registered sandbox a new flow was judged for, if any.
    pub sandbox: Option<[u8; 4]>,
    /// A UDP flow the sandbox started, to remember so that its replies come back in.
    pub remember_udp: Option<UdpFlowKey>,
}

impl Verdict {
    const fn of(reason: Reason) -> Self {
        Self { reason, sandbox: None, remember_udp: None }
    }
    const fn for_sandbox(reason: Reason, addr: [u8; 4]) -> Self {
        Self { reason, sandbox: Some(addr), remember_udp: None }
    }
}

/// Traffic going INTO a sandbox (tcx egress of its host-side interface). `mark` is `skb->mark`.
#[inline(always)]
pub fn into_sandbox<L: Lookups>(
    parsed: Result<Summary, ParseError>,
    mark: u32,
    maps: &L,
) -> Verdict {
    let (src, dst, l4) = match parsed {
        Err(_) => return Verdict::of(Reason::DropMalformed),
        Ok(Summary::NonIp) => return Verdict::of(Reason::PassNonIp),
        Ok(Summary::Ipv6 { l4 }) => {
            return Verdict::of(match l4 {
                L4::Icmp => Reason::PassIcmp,
                L4::Tcp { .. } if !l4.is_new_tcp() => Reason::PassEstablished,
                _ => Reason::DropIpv6,
            });
        }
        Ok(Summary::Ipv4 { src, dst, l4 }) => (src, dst, l4),
    };
    match l4 {
        L4::Icmp => Verdict::of(Reason::PassIcmp),
        L4::Fragment => Verdict::of(Reason::PassFragment),
        L4::Tcp { dport, .. } => {
            if !l4.is_new_tcp() {
                return Verdict::of(Reason::PassEstablished);
            }
            if !maps.sandbox(dst).found {
                return Verdict::of(Reason::DropUnknownSandbox);
            }
            let port = u16::from_be_bytes(dport);
            let gateway = maps.gateway_mark();
            let reason = if port == SANDBOX_NEVER_PORT {
                Reason::DropReservedPort
            } else if gateway == 0 || mark != gateway {
                Reason::DropNotFromGateway
            } else if port == SANDBOX_API_PORT || port == SANDBOX_SYSTEM_PORT {
                Reason::PassSandboxApi
            } else {
                if maps.policy_allow(&Endpoint::new(dst, port, IPPROTO_TCP)) == allow::FROM_GATEWAY {
                    Reason::PassAllowed
                } else {
                    Reason::DropPortClosed
                }
            };
            Verdict::for_sandbox(reason, dst)
        }
        L4::Udp { sport, dport } => {
            let reply = UdpFlowKey { sandbox: dst, peer: src, sandbox_port: dport, peer_port: sport };
            if maps.udp_flow(&reply) {
                Verdict::of(Reason::PassUdpReply)
            } else {
                Verdict::of(Reason::DropUdp)
            }
        }
        L4::Other(_) => Verdict::of(Reason::DropProtocol),
    }
}

/// Traffic coming OUT of a sandbox (tcx ingress of its host-side interface, whose index is
/// `ifindex`).
#[inline(always)]
pub fn out_of_sandbox<L: Lookups>(
    parsed: Result<Summary, ParseError>,
    ifindex: u32,
    maps: &L,
) -> Verdict {
    let (src, dst, l4) = match parsed {
        Err(_) => return Verdict::of(Reason::DropMalformed),
        Ok(Summary::NonIp) => return Verdict::of(Reason::PassNonIp),
        Ok(Summary::Ipv6 { l4 }) => {
            // No sandbox has an IPv6 address yet: only the wildcard protected sockets apply.
            return match dest_port(&l4) {
                Some((proto, port)) if maps.protected(&Endpoint::new([0; 4], port, proto)) => {
                    Verdict::of(Reason::DropProtected)
                }
                _ => Verdict::of(Reason::PassOut),
            };
        }
        Ok(Summary::Ipv4 { src, dst, l4 }) => (src, dst, l4),
    };
    let from = maps.sandbox(src);
    if from.found && from.ifindex != ifindex {
        return Verdict::of(Reason::DropSpoofed);
    }
    if dst != src && maps.sandbox(dst).found {
        return Verdict::of(Reason::DropSandboxToSandbox);
    }
    if let Some((proto, port)) = dest_port(&l4) {
        if maps.protected(&Endpoint::new(dst, port, proto))
            || maps.protected(&Endpoint::new([0; 4], port, proto))
        {
            return Verdict::of(Reason::DropProtected);
        }
    }
    let mut v = Verdict::of(Reason::PassOut);
    if let L4::Udp { sport, dport } = l4 {
        v.remember_udp =
            Some(UdpFlowKey { sandbox: src, peer: dst, sandbox_port: sport, peer_port: dport });
    }
    v
}

/// New inbound connections on the public interface (XDP).
#[inline(always)]
pub fn edge_guard<L: Lookups>(parsed: Result<Summary, ParseError>, maps: &L) -> Verdict {
    let l4 = match parsed {
        Err(_) => return Verdict::of(Reason::PassEdgeMalformed),
        Ok(Summary::NonIp) => return Verdict::of(Reason::PassNonIp),
        Ok(Summary::Ipv4 { l4, .. }) | Ok(Summary::Ipv6 { l4 }) => l4,
    };
    match l4 {
        L4::Tcp { dport, .. } if l4.is_new_tcp() => {
            let key = PortKey::new(u16::from_be_bytes(dport), IPPROTO_TCP);
            if maps.public_port(&key) {
                Verdict::of(Reason::PassEdgePublic)
            } else {
                Verdict::of(Reason::DropEdgeClosedPort)
            }
        }
        _ => Verdict::of(Reason::PassEdgeOther),
    }
}

#[inline(always)]
fn dest_port(l4: &L4) -> Option<(u8, u16)> {
    match l4 {
        L4::Tcp { dport, .. } => Some((IPPROTO_TCP, u16::from_be_bytes(*dport))),
        L4::Udp { dport, .. } => Some((IPPROTO_UDP, u16::from_be_bytes(*dport))),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
