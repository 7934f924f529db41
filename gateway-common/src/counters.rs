//! Verdict reasons. Every packet a program sees is counted exactly once, per CPU, under
//! `Hook * REASONS_PER_HOOK + Reason` in `MAP_VERDICTS`.

/// Slots reserved per hook in `MAP_VERDICTS`.
pub const REASONS_PER_HOOK: u32 = 32;
/// Entries of `MAP_VERDICTS`.
pub const VERDICT_SLOTS: u32 = REASONS_PER_HOOK * Hook::ALL.len() as u32;

/// Where a program is attached.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// tcx egress of a sandbox's host-side interface (towards the sandbox).
    SandboxIn = 0,
    /// tcx ingress of a sandbox's host-side interface (from the sandbox).
    SandboxOut = 1,
    /// XDP on the public interface.
    Edge = 2,
}

impl Hook {
    /// Every hook.
    pub const ALL: [Hook; 3] = [Hook::SandboxIn, Hook::SandboxOut, Hook::Edge];
    /// Stable name used in metrics and dumps.
    pub const fn name(self) -> &'static str {
        match self {
            Hook::SandboxIn => "sandbox_in",
            Hook::SandboxOut => "sandbox_out",
            Hook::Edge => "edge",
        }
    }
    /// The slot of `reason` for this hook.
    pub const fn slot(self, reason: Reason) -> u32 {
        self as u32 * REASONS_PER_HOOK + reason as u32
    }
}

/// Why a packet was passed or dropped.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// Not IP (ARP, LLDP, ...).
    PassNonIp = 0,
    /// TCP that is not a new connection (no SYN, or SYN+ACK).
    PassEstablished = 1,
    /// ICMP or ICMPv6.
    PassIcmp = 2,
    /// A non-first IPv4 fragment (carries no L4 header).
    PassFragment = 3,
    /// New TCP from the gateway to a port the policy map allows.
    PassAllowed = 4,
    /// New TCP from the gateway to the sandbox API (8080) or system port (80).
    PassSandboxApi = 5,
    /// UDP reply to a flow the sandbox started.
    PassUdpReply = 6,
    /// Leaving a sandbox towards anything but another sandbox, a protected socket or a new
    /// connection to the host.
    PassOut = 7,
    /// New TCP to a public port on the public interface.
    PassEdgePublic = 8,
    /// Anything else on the public interface.
    PassEdgeOther = 9,
    /// Unparseable on the public interface (the edge guard only judges what it understands).
    PassEdgeMalformed = 10,
    /// A new connection from a sandbox to a host address, on a port of `MAP_HOST_ALLOW`.
    PassHostAllowed = 11,
    /// New TCP to an exposed L4 port on the public interface, from a source its allow-list has.
    PassEdgeL4 = 12,
    /// Truncated or malformed IP/L4 header on a sandbox interface (fail closed).
    DropMalformed = 16,
    /// New flow to an address that is not a registered sandbox (fail closed).
    DropUnknownSandbox = 17,
    /// New TCP to port 443 inside a sandbox: never reachable.
    DropReservedPort = 18,
    /// New TCP without the gateway's mark.
    DropNotFromGateway = 19,
    /// New TCP from the gateway to a port the policy does not allow.
    DropPortClosed = 20,
    /// New UDP flow into a sandbox.
    DropUdp = 21,
    /// An IP protocol other than TCP, UDP, ICMP into a sandbox.
    DropProtocol = 22,
    /// A new IPv6 flow into a sandbox.
    DropIpv6 = 23,
    /// Leaving a sandbox with another registered sandbox's source address.
    DropSpoofed = 24,
    /// From one sandbox to another (isolation).
    DropSandboxToSandbox = 25,
    /// From a sandbox to a protected host socket (admin API, metrics).
    DropProtected = 26,
    /// New TCP to a host port that is not public, on the public interface.
    DropEdgeClosedPort = 27,
    /// A new connection from a sandbox to an address of the host (`MAP_HOST_ADDRS`, broadcast,
    /// multicast) on a port outside `MAP_HOST_ALLOW`.
    DropHost = 28,
    /// New TCP on the public interface from a source over `EdgeConfig::syn_rate` (IPv4).
    DropEdgeRate = 29,
    /// New TCP to an exposed L4 port on the public interface, from a source outside its
    /// allow-list.
    DropEdgeNotAllowed = 30,
}

impl Reason {
    /// Every reason, in slot order.
    pub const ALL: [Reason; 28] = [
        Reason::PassNonIp,
        Reason::PassEstablished,
        Reason::PassIcmp,
        Reason::PassFragment,
        Reason::PassAllowed,
        Reason::PassSandboxApi,
        Reason::PassUdpReply,
        Reason::PassOut,
        Reason::PassEdgePublic,
        Reason::PassEdgeOther,
        Reason::PassEdgeMalformed,
        Reason::PassHostAllowed,
        Reason::PassEdgeL4,
        Reason::DropMalformed,
        Reason::DropUnknownSandbox,
        Reason::DropReservedPort,
        Reason::DropNotFromGateway,
        Reason::DropPortClosed,
        Reason::DropUdp,
        Reason::DropProtocol,
        Reason::DropIpv6,
        Reason::DropSpoofed,
        Reason::DropSandboxToSandbox,
        Reason::DropProtected,
        Reason::DropEdgeClosedPort,
        Reason::DropHost,
        Reason::DropEdgeRate,
        Reason::DropEdgeNotAllowed,
    ];

    /// Whether the packet is dropped. Reasons from 16 up drop, the rest pass.
    pub const fn is_drop(self) -> bool {
        self as u32 >= 16
    }

    /// The reason stored in `slot` of a hook, if any.
    pub fn from_u32(v: u32) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| *r as u32 == v)
    }

    /// Stable snake_case name used in metrics, dumps and logs.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::PassNonIp => "pass_non_ip",
            Reason::PassEstablished => "pass_established",
            Reason::PassIcmp => "pass_icmp",
            Reason::PassFragment => "pass_fragment",
            Reason::PassAllowed => "pass_allowed",
            Reason::PassSandboxApi => "pass_sandbox_api",
            Reason::PassUdpReply => "pass_udp_reply",
            Reason::PassOut => "pass_out",
            Reason::PassEdgePublic => "pass_edge_public",
            Reason::PassEdgeOther => "pass_edge_other",
            Reason::PassEdgeMalformed => "pass_edge_malformed",
            Reason::PassHostAllowed => "pass_host_allowed",
            Reason::PassEdgeL4 => "pass_edge_l4",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropUnknownSandbox => "drop_unknown_sandbox",
            Reason::DropReservedPort => "drop_reserved_port",
            Reason::DropNotFromGateway => "drop_not_from_gateway",
            Reason::DropPortClosed => "drop_port_closed",
            Reason::DropUdp => "drop_udp",
            Reason::DropProtocol => "drop_protocol",
            Reason::DropIpv6 => "drop_ipv6",
            Reason::DropSpoofed => "drop_spoofed",
            Reason::DropSandboxToSandbox => "drop_sandbox_to_sandbox",
            Reason::DropProtected => "drop_protected",
            Reason::DropEdgeClosedPort => "drop_edge_closed_port",
            Reason::DropHost => "drop_host",
            Reason::DropEdgeRate => "drop_edge_rate",
            Reason::DropEdgeNotAllowed => "drop_edge_not_allowed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_fit_their_slots_and_round_trip() {
        for r in Reason::ALL {
            assert!((r as u32) < REASONS_PER_HOOK, "{r:?}");
            assert_eq!(Reason::from_u32(r as u32), Some(r));
            assert_eq!(r.is_drop(), r.name().starts_with("drop_"), "{r:?}");
        }
        assert_eq!(Hook::Edge.slot(Reason::DropEdgeClosedPort), 64 + 27);
        assert!(Hook::Edge.slot(Reason::DropEdgeClosedPort) < VERDICT_SLOTS);
        assert_eq!(Hook::Edge.slot(Reason::DropEdgeNotAllowed), 64 + 30);
        assert!(Reason::ALL.windows(2).all(|w| (w[0] as u32) < (w[1] as u32)), "ALL is in slot order");
    }
}
