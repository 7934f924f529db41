//! Target `dataplane`: the eBPF programs' packet parser and decisions
//! (`gateway_common::{parse, decide}`), the very code the kernel runs, compiled for the host.
//!
//! Input: byte 0 selects map contents (bits: destination registered, source registered, on
//! which interface, policy entry, public port, protected sockets, UDP flow), byte 1 the socket
//! mark, whether the gateway configured one, whether the destination is a host address,
//! whether the host allow-list has its port, whether the port is an exposed L4 port, whether
//! its allow-list has the source and whether the source is over the rate limit; the rest is the
//! Ethernet frame.
//!
//! Properties: the parser agrees with an independent reference parser on every frame (libFuzzer
//! hands over exactly-sized buffers, so AddressSanitizer reports any read past the frame);
//! into a sandbox, a new flow is admitted only for a well-formed IPv4 TCP SYN (no ACK, not a
//! fragment) carrying the gateway's configured mark, to a port the policy allows (or the
//! sandbox API / system port of a registered sandbox), never to 443; malformed frames are
//! dropped; out of a sandbox, spoofed sources, other sandboxes and protected sockets are never
//! reached, and the host only by an allowed port or an answer to a flow it started; on the
//! public interface a new connection passes only to a public port or, over IPv4 from a source
//! its allow-list has, to an exposed L4 port, and never from an IPv4 source over the rate. And the
//! converse: a well-formed allowed SYN from the gateway is admitted.

use gateway_common::{
    IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
    counters::Reason,
    decide::{Lookups, SandboxLookup, edge_guard, into_sandbox, out_of_sandbox},
    parse::{Net, Summary, TCP_ACK, TCP_SYN, Transport, parse},
    policy::{Endpoint, PortKey, SandboxRecord, UdpFlowKey, allow},
};

const GATEWAY_MARK: u32 = 0x6777;
const SANDBOX_IFINDEX: u32 = 7;

#[derive(Default)]
struct Maps {
    mark: u32,
    sandboxes: Vec<([u8; 4], u32)>,
    policy: Vec<Endpoint>,
    protected: Vec<Endpoint>,
    public: Vec<PortKey>,
    udp: Vec<UdpFlowKey>,
    host_addrs: Vec<[u8; 4]>,
    host_allow: Vec<PortKey>,
    l4_ports: Vec<u16>,
    l4_allow: Vec<(u16, [u8; 4])>,
    over_rate: Vec<[u8; 4]>,
}

impl Lookups for Maps {
    fn gateway_mark(&self) -> u32 {
        self.mark
    }
    fn sandbox(&self, addr: [u8; 4]) -> SandboxLookup {
        self.sandboxes.iter().find(|(a, _)| *a == addr).map_or(SandboxLookup::MISS, |(_, ifindex)| {
            SandboxLookup::hit(SandboxRecord { ifindex: *ifindex, flags: 0 })
        })
    }
    fn policy_admit(&self, key: &Endpoint) -> u8 {
        if self.policy.contains(key) { allow::FROM_GATEWAY } else { 0 }
    }
    fn protected(&self, key: &Endpoint) -> bool {
        self.protected.contains(key)
    }
    fn public_port(&self, key: &PortKey) -> bool {
        self.public.contains(key)
    }
    fn udp_flow(&self, key: &UdpFlowKey) -> bool {
        self.udp.contains(key)
    }
    fn host_addr(&self, addr: [u8; 4]) -> bool {
        self.host_addrs.contains(&addr)
    }
    fn host_allowed(&self, key: &PortKey) -> bool {
        self.host_allow.contains(key)
    }
    fn syn_admit(&self, src: [u8; 4]) -> bool {
        !self.over_rate.contains(&src)
    }
    fn l4_port(&self, port: u16) -> bool {
        self.l4_ports.contains(&port)
    }
    fn l4_allowed(&self, port: u16, src: [u8; 4]) -> bool {
        self.l4_allow.contains(&(port, src))
    }
}

/// The documented parse, written independently with plain slice indexing.
fn reference_parse(p: &[u8]) -> Summary {
    reference_frame(p).unwrap_or_default()
}

fn reference_frame(p: &[u8]) -> Option<Summary> {
    let be16 = |i: usize| Some(u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]));
    let quad = |i: usize| Some([*p.get(i)?, *p.get(i + 1)?, *p.get(i + 2)?, *p.get(i + 3)?]);
    if p.len() < 14 {
        return None;
    }
    let mut ethertype = be16(12)?;
    let mut l3 = 14;
    for _ in 0..2 {
        if ethertype == 0x8100 || ethertype == 0x88a8 {
            if p.len() < l3 + 4 {
                return None;
            }
            ethertype = be16(l3 + 2)?;
            l3 += 4;
        }
    }
    let (mut s, l4, proto) = match ethertype {
        0x0800 => {
            if p.len() < l3 + 20 || p[l3] >> 4 != 4 || p[l3] & 0xf < 5 {
                return None;
            }
            let s = Summary { net: Net::Ipv4, src: quad(l3 + 12)?, dst: quad(l3 + 16)?, ..Summary::default() };
            if be16(l3 + 6)? & 0x1fff != 0 {
                return Some(Summary { transport: Transport::Fragment, ..s });
            }
            (s, l3 + usize::from(p[l3] & 0xf) * 4, p[l3 + 9])
        }
        0x86dd => {
            if p.len() < l3 + 40 || p[l3] >> 4 != 6 {
                return None;
            }
            let dst_link6 = p[l3 + 24] == 0xff || (p[l3 + 24] == 0xfe && p[l3 + 25] & 0xc0 == 0x80);
            (Summary { net: Net::Ipv6, dst_link6, ..Summary::default() }, l3 + 40, p[l3 + 6])
        }
        _ => return Some(Summary { net: Net::NonIp, ..Summary::default() }),
    };
    match proto {
        IPPROTO_TCP => {
            if p.len() < l4 + 20 || p[l4 + 12] >> 4 < 5 {
                return None;
            }
            s.transport = Transport::Tcp;
            s.tcp_flags = p[l4 + 13];
        }
        IPPROTO_UDP => {
            if p.len() < l4 + 8 {
                return None;
            }
            s.transport = Transport::Udp;
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if p.len() < l4 + 4 {
                return None;
            }
            s.transport = Transport::Icmp;
            s.icmp_type = p[l4];
        }
        _ => s.transport = Transport::Other,
    }
    if matches!(s.transport, Transport::Tcp | Transport::Udp) {
        s.sport = [p[l4], p[l4 + 1]];
        s.dport = [p[l4 + 2], p[l4 + 3]];
    }
    Some(s)
}

/// Runs the checks on one input.
pub fn check(data: &[u8]) {
    let [flags, mark_sel, packet @ ..] = data else { return };
    let s = parse(packet);
    let r = reference_parse(packet);
    assert_eq!(s, r, "the parser disagrees with the reference on {packet:02x?}");

    let port = r.dest_port();
    let proto = if r.transport == Transport::Udp { IPPROTO_UDP } else { IPPROTO_TCP };
    let bit = |i: u8| flags & (1 << i) != 0;
    let mut m = Maps { mark: if mark_sel & 0x80 != 0 { 0 } else { GATEWAY_MARK }, ..Maps::default() };
    if bit(0) {
        m.sandboxes.push((r.dst, SANDBOX_IFINDEX));
    }
    if bit(1) {
        m.sandboxes.push((r.src, if bit(2) { SANDBOX_IFINDEX } else { SANDBOX_IFINDEX + 1 }));
    }
    if bit(3) {
        m.policy.push(Endpoint::new(r.dst, port, IPPROTO_TCP));
    }
    if bit(4) {
        m.public.push(PortKey::new(port, IPPROTO_TCP));
    }
    if bit(5) {
        m.protected.push(Endpoint::new(r.dst, port, proto));
    }
    if bit(6) {
        m.protected.push(Endpoint::new([0; 4], port, proto));
    }
    if bit(7) {
        m.udp.push(UdpFlowKey { sandbox: r.dst, peer: r.src, sandbox_port: r.dport, peer_port: r.sport });
    }
    if mark_sel & 0x40 != 0 {
        m.host_addrs.push(r.dst);
    }
    if mark_sel & 0x20 != 0 {
        m.host_allow.push(PortKey::new(port, proto));
    }
    if mark_sel & 0x04 != 0 {
        m.l4_ports.push(port);
    }
    if mark_sel & 0x08 != 0 {
        m.l4_allow.push((port, r.src));
    }
    if mark_sel & 0x10 != 0 {
        m.over_rate.push(r.src);
    }
    let mark = match mark_sel & 3 {
        0 => GATEWAY_MARK,
        1 => 0,
        2 => GATEWAY_MARK + 1,
        _ => u32::from(*mark_sel) << 8,
    };
    check_into(&r, mark, &m);
    check_out(&r, &m);
    check_edge(&r, &m);
}

fn is_syn(r: &Summary) -> bool {
    r.transport == Transport::Tcp && r.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

fn check_into(r: &Summary, mark: u32, m: &Maps) {
    let v = into_sandbox(*r, mark, m);
    let port = r.dest_port();
    let from_gateway = m.mark != 0 && mark == m.mark;
    let registered = m.sandbox(r.dst).found;
    let policy = m.policy.contains(&Endpoint::new(r.dst, port, IPPROTO_TCP));
    let ipv4_syn = r.net == Net::Ipv4 && is_syn(r);
    match v.reason {
        Reason::PassAllowed => {
            assert!(ipv4_syn && from_gateway && policy, "admitted: {r:?} mark {mark:#x}");
            assert!(![80, 443, 8080].contains(&port), "admitted to built-in port {port} by policy");
        }
        Reason::PassSandboxApi => {
            assert!(ipv4_syn && from_gateway && registered, "admitted: {r:?} mark {mark:#x}");
            assert!(port == 80 || port == 8080, "admitted to {port} as the sandbox API");
        }
        Reason::PassEstablished => assert!(r.transport == Transport::Tcp && !is_syn(r), "{r:?}"),
        Reason::PassIcmp => assert_eq!(r.transport, Transport::Icmp),
        Reason::PassFragment => assert_eq!((r.net, r.transport), (Net::Ipv4, Transport::Fragment)),
        Reason::PassNonIp => assert_eq!(r.net, Net::NonIp),
        Reason::PassUdpReply => {
            assert_eq!((r.net, r.transport), (Net::Ipv4, Transport::Udp));
            assert!(!m.udp.is_empty(), "a UDP reply without a flow");
        }
        reason => assert!(reason.is_drop(), "into a sandbox: {reason:?} for {r:?}"),
    }
    if r.net == Net::Malformed {
        assert_eq!(v.reason, Reason::DropMalformed);
    }
    // The converse: what must be admitted is.
    if ipv4_syn && from_gateway && policy && ![80, 443, 8080].contains(&port) {
        assert_eq!(v.reason, Reason::PassAllowed, "{r:?}");
    }
    if ipv4_syn && registered && port == 443 {
        assert_eq!(v.reason, Reason::DropReservedPort);
    }
}

fn check_out(r: &Summary, m: &Maps) {
    let v = out_of_sandbox(*r, SANDBOX_IFINDEX, m);
    if r.net == Net::Malformed {
        assert_eq!(v.reason, Reason::DropMalformed);
        return;
    }
    if r.net == Net::Ipv6 && r.dst_link6 && opens_flow(r) && m.protected.is_empty() {
        assert!(matches!(v.reason, Reason::DropHost | Reason::PassHostAllowed), "{r:?}");
    }
    if r.net != Net::Ipv4 {
        return;
    }
    let src = m.sandbox(r.src);
    if src.found && src.ifindex != SANDBOX_IFINDEX {
        assert_eq!(v.reason, Reason::DropSpoofed, "{r:?}");
    } else if r.dst != r.src && m.sandbox(r.dst).found {
        assert_eq!(v.reason, Reason::DropSandboxToSandbox, "{r:?}");
    } else if matches!(r.transport, Transport::Tcp | Transport::Udp) && !m.protected.is_empty() {
        assert_eq!(v.reason, Reason::DropProtected, "{r:?}");
    } else if opens_flow(r) && (r.dst[0] >= 224 || m.host_addrs.contains(&r.dst)) {
        let proto = if r.transport == Transport::Udp { IPPROTO_UDP } else { IPPROTO_TCP };
        let allowed = matches!(r.transport, Transport::Tcp | Transport::Udp)
            && m.host_allow.contains(&PortKey::new(r.dest_port(), proto));
        assert_eq!(v.reason, if allowed { Reason::PassHostAllowed } else { Reason::DropHost }, "{r:?}");
    } else {
        assert_eq!(v.reason, Reason::PassOut, "{r:?}");
        assert_eq!(v.remember_udp, r.transport == Transport::Udp);
        if v.remember_udp {
            assert_eq!(
                v.udp_flow,
                UdpFlowKey { sandbox: r.src, peer: r.dst, sandbox_port: r.sport, peer_port: r.dport }
            );
        }
    }
}

/// Whether a packet out of a sandbox may start a flow on the host: a SYN, UDP, another
/// protocol, ICMP other than echo reply (0), unreachable (3), time exceeded (11), parameter
/// problem (12).
fn opens_flow(r: &Summary) -> bool {
    match r.transport {
        Transport::Tcp => is_syn(r),
        Transport::Icmp if r.net == Net::Ipv6 => [128, 139].contains(&r.icmp_type),
        Transport::Icmp => ![0, 3, 11, 12].contains(&r.icmp_type),
        Transport::Fragment => false,
        Transport::Udp | Transport::Other | Transport::None => true,
    }
}

fn check_edge(r: &Summary, m: &Maps) {
    let v = edge_guard(*r, m);
    let port = r.dest_port();
    let public = m.public.contains(&PortKey::new(port, IPPROTO_TCP));
    let exposed = m.l4_ports.contains(&port);
    let allowed = m.l4_allow.contains(&(port, r.src));
    let expected = match r.net {
        Net::Malformed => Reason::PassEdgeMalformed,
        Net::NonIp => Reason::PassNonIp,
        Net::Ipv4 if is_syn(r) && m.over_rate.contains(&r.src) => Reason::DropEdgeRate,
        Net::Ipv4 | Net::Ipv6 if is_syn(r) && public => Reason::PassEdgePublic,
        Net::Ipv4 if is_syn(r) && exposed && allowed => Reason::PassEdgeL4,
        Net::Ipv4 if is_syn(r) && exposed => Reason::DropEdgeNotAllowed,
        Net::Ipv4 | Net::Ipv6 if is_syn(r) => Reason::DropEdgeClosedPort,
        Net::Ipv4 | Net::Ipv6 => Reason::PassEdgeOther,
    };
    assert_eq!(v.reason, expected, "{r:?}");
    let on_port = matches!(v.reason, Reason::PassEdgeL4 | Reason::DropEdgeNotAllowed | Reason::DropEdgeRate);
    assert_eq!(v.l4_port, if on_port { port } else { 0 }, "{r:?}");
}
